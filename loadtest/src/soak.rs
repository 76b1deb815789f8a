//! `churn --duration D`: a memory soak. Clients on several topics each read for a random
//! time, hang up (a share by RST, the rest by FIN) and resume at once with the
//! `Last-Event-ID` they saw, for `D`, while one producer publishes round-robin on the
//! topics at a fixed rate. Every few seconds the server's anonymous memory (`Anonymous:`
//! of `/proc/PID/smaps_rollup`) is sampled; the report gives the series and, after a
//! warm-up (history filled), the least-squares slope in KiB per minute and the change it
//! implies over the window, relative to the window's mean.
//!
//! Correctness is checked as in `churn`: per client, every event of its topic exactly once
//! across all its connections (a client hangs up only once it has seen an event, so that
//! its resume point exists). All clients live on one `mio` thread of this process: at
//! ~600 connects per second the client is cheap next to the server.
//!
//! Each sample is also written to stderr as it is taken (`soak t=... anon_kib=...`), so
//! a run stopped early still leaves its series behind.

use crate::churn::Args;
use crate::rng::Rng;
use crate::sse::{Flow, Item, Parser, Payload, payload};
use crate::sys;
use crate::worker::{self, WAKER, open_socket};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

const MAX_IN_FLIGHT: usize = 512;
const MAX_HEAD: usize = 16 * 1024;
/// Source addresses the clients bind to (127.1.0.1-16): FIN-closed connections leave
/// TIME_WAIT entries on the client side, which one source address would run out of.
const SOURCES: u8 = 16;

/// `Anonymous:` of `/proc/PID/smaps_rollup`, KiB.
pub fn anon_kib(pid: u32) -> Option<u64> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    t.lines()
        .find(|l| l.starts_with("Anonymous:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Least-squares line through `(t, y)`: `(slope per unit t, intercept)`.
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mt) * (p.0 - mt)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    Some((slope, my - slope * mt))
}

#[derive(Debug, Default, Serialize, Clone, Copy)]
struct Counts {
    connects: u64,
    streams_opened: u64,
    resumes: u64,
    resets: u64,
    fin_closes: u64,
    rst_closes: u64,
    server_closes: u64,
    connect_errors: u64,
    other_statuses: u64,
    deliveries: u64,
    missing: u64,
    duplicates: u64,
    missing_after_reset: u64,
    foreign: u64,
    keepalives: u64,
}

/// Progress the sampler reads while the clients run.
#[derive(Default)]
struct Live {
    connects: AtomicU64,
    deliveries: AtomicU64,
    open: AtomicU64,
}

#[derive(Serialize)]
struct Window {
    from_s: f64,
    to_s: f64,
    samples: usize,
    slope_kib_per_min: f64,
    mean_kib: f64,
    /// The fitted line's change over the window, relative to the window's mean.
    fitted_change_pct: f64,
    /// Last sample against the first of the window.
    first_kib: u64,
    last_kib: u64,
    change_pct: f64,
    min_kib: u64,
    max_kib: u64,
    /// Largest distance of a sample from the window's mean.
    max_dev_pct: f64,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    ok: bool,
    problems: Vec<String>,
    clients: usize,
    topics: usize,
    rate: f64,
    size: usize,
    duration_s: f64,
    read_ms: (u64, u64),
    rst_share: f64,
    counts: Counts,
    connects_per_s: f64,
    published: u64,
    publish_ok: u64,
    publish_first_error: Option<String>,
    complete_clients: usize,
    warmup_s: f64,
    sample_every_s: f64,
    window: Option<Window>,
    /// After every client left and `--tail` passed (history expired): anonymous KiB.
    anon_kib_before: Option<u64>,
    anon_kib_end_of_churn: Option<u64>,
    anon_kib_after_tail: Option<u64>,
    server_cpu_s: f64,
    /// `[seconds since the start of publishing, anonymous KiB, connects so far]`.
    series: Vec<(f64, u64, u64)>,
    command: String,
    unix_time: u64,
    load_avg_start: String,
    load_avg_end: String,
}

enum Cmd {
    /// Stop churning; catch up to these per-topic event counts within the grace.
    Finish { events: Vec<u64>, grace_ns: u64 },
}

pub fn run(a: &Args, duration: Duration) -> i32 {
    if let Err(e) = a.common.check() {
        eprintln!("ssehub-loadtest: {e}");
        return 2;
    }
    let topics = a.topics.max(1);
    if a.clients == 0 || a.rate <= 0.0 || a.max_read < a.min_read || a.min_read.is_zero() {
        eprintln!("ssehub-loadtest: bad soak parameters");
        return 2;
    }
    sys::raise_nofile();
    let start_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let load_start = sys::load_avg();
    let total = a.common.connect_timeout + duration + a.grace + a.tail + Duration::from_secs(60);
    let hard = sys::mono_ns() + total.as_nanos() as u64;
    std::thread::spawn(move || {
        sys::sleep_until_ns(hard);
        eprintln!("ssehub-loadtest: hard deadline passed, exiting");
        std::process::exit(3);
    });
    let base = a
        .topic
        .clone()
        .unwrap_or_else(|| format!("soak-{}", std::process::id()));
    let names: Vec<String> = (0..topics).map(|t| format!("{base}-{t}")).collect();
    let pid = a.common.server_pid;
    let anon = || pid.and_then(anon_kib);
    let cpu = || pid.map_or(0.0, |p| sys::server_sample(p).cpu_s);
    let anon_before = anon();

    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ssehub-loadtest: poll: {e}");
            return 1;
        }
    };
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).expect("waker"));
    let (tx, rx) = mpsc::channel::<Cmd>();
    let live = Arc::new(Live::default());
    let ready = Arc::new(AtomicBool::new(false));
    let mut clients = Clients {
        poll,
        addr: a.common.addr,
        paths: names
            .iter()
            .map(|n| format!("{}{}", a.common.sub_path, n))
            .collect(),
        conns: (0..a.clients)
            .map(|i| Conn {
                topic: i % topics,
                ..Conn::default()
            })
            .collect(),
        timers: BinaryHeap::new(),
        in_flight: 0,
        opened: 0,
        counts: Counts::default(),
        rng: Rng::new(sys::mono_ns() | 1),
        min_read_ns: a.min_read.as_nanos() as u64,
        max_read_ns: a.max_read.as_nanos() as u64,
        max_delay_ns: a.max_delay.as_nanos() as u64,
        rst_share: a.rst_share,
        churning: true,
        live: live.clone(),
        errors: Vec::new(),
    };
    let r2 = ready.clone();
    let client_thread = std::thread::spawn(move || {
        let res = clients.run(&rx, &r2);
        (res, clients.counts, clients.errors)
    });

    // Wait for the first round of connections.
    let connect_until = sys::mono_ns() + a.common.connect_timeout.as_nanos() as u64;
    while !ready.load(Ordering::Relaxed) && sys::mono_ns() < connect_until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let open0 = live.open.load(Ordering::Relaxed);
    eprintln!("ready clients={open0}");
    let mut problems = Vec::new();
    if (open0 as usize) < a.clients {
        problems.push(format!("only {open0} of {} clients connected", a.clients));
    }
    std::thread::sleep(a.settle);

    // The producer: event k is due at start + k / rate, on topic k % topics.
    let events_total = (duration.as_secs_f64() * a.rate).round() as u64;
    let start_ns = sys::mono_ns() + 50_000_000;
    let sock = match UnixStream::connect(&a.common.socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "ssehub-loadtest: publisher: connect {}: {e}",
                a.common.socket.display()
            );
            return 1;
        }
    };
    let publisher = {
        let names = names.clone();
        let rate = a.rate;
        let size = a.size;
        std::thread::spawn(move || publish(sock, &names, rate, size, events_total, start_ns))
    };

    // Sample while the churn runs.
    let cpu0 = cpu();
    let every = a.sample_every.max(Duration::from_millis(100));
    let mut series = Vec::new();
    let end_ns = start_ns + duration.as_nanos() as u64;
    let mut next = start_ns;
    loop {
        sys::sleep_until_ns(next);
        let now = sys::mono_ns();
        let t = (now.saturating_sub(start_ns)) as f64 / 1e9;
        let kib = anon().unwrap_or(0);
        let connects = live.connects.load(Ordering::Relaxed);
        series.push(((t * 10.0).round() / 10.0, kib, connects));
        eprintln!(
            "soak t={t:.1} anon_kib={kib} connects={connects} deliveries={} open={}",
            live.deliveries.load(Ordering::Relaxed),
            live.open.load(Ordering::Relaxed)
        );
        if now >= end_ns {
            break;
        }
        next = (next + every.as_nanos() as u64).min(end_ns);
    }
    let anon_end = anon();
    let cpu1 = cpu();
    let (published, publish_ok, per_topic, publish_err) =
        publisher
            .join()
            .unwrap_or((0, 0, vec![0; topics], Some("publisher panicked".into())));
    let _ = tx.send(Cmd::Finish {
        events: per_topic.clone(),
        grace_ns: a.grace.as_nanos() as u64,
    });
    let _ = waker.wake();
    let (complete, counts, errors) = client_thread.join().unwrap_or((
        0,
        Counts::default(),
        vec!["client thread panicked".into()],
    ));
    for e in errors.iter().take(5) {
        eprintln!("client error: {e}");
    }

    // Clients gone: watch whether the memory comes back once history has expired.
    let mut anon_tail = None;
    if !a.tail.is_zero() {
        let tail_end = sys::mono_ns() + a.tail.as_nanos() as u64;
        let mut next = sys::mono_ns();
        while next <= tail_end {
            sys::sleep_until_ns(next);
            let t = (sys::mono_ns().saturating_sub(start_ns)) as f64 / 1e9;
            let kib = anon().unwrap_or(0);
            series.push(((t * 10.0).round() / 10.0, kib, counts.connects));
            eprintln!("soak tail t={t:.1} anon_kib={kib}");
            anon_tail = Some(kib);
            next += every.as_nanos() as u64;
        }
    }

    // The window: samples after the warm-up, up to the end of the churn.
    let warm = a.warmup.as_secs_f64();
    let dur = duration.as_secs_f64();
    let pts: Vec<(f64, u64)> = series
        .iter()
        .filter(|s| s.0 >= warm && s.0 <= dur + 0.05)
        .map(|s| (s.0, s.1))
        .collect();
    let window = window(&pts);
    if publish_ok < events_total {
        problems.push(format!(
            "publisher: {publish_ok} of {events_total} events accepted ({})",
            publish_err.clone().unwrap_or_default()
        ));
    }
    if counts.missing > 0 || counts.duplicates > 0 {
        problems.push(format!(
            "missing {}, duplicated {}",
            counts.missing, counts.duplicates
        ));
    }
    if complete < a.clients {
        problems.push(format!(
            "{} clients did not get every event",
            a.clients - complete
        ));
    }
    if counts.foreign > 0 {
        problems.push(format!("{} foreign events", counts.foreign));
    }
    match &window {
        Some(w) if pid.is_some() && w.fitted_change_pct.abs() > a.max_drift_pct => {
            problems.push(format!(
                "anonymous memory drifts {:+.2} % over the window ({:+.1} KiB/min), more than ±{} %",
                w.fitted_change_pct, w.slope_kib_per_min, a.max_drift_pct
            ));
        }
        None if pid.is_some() => problems.push("too few samples after the warm-up".into()),
        _ => {}
    }
    let report = Report {
        scenario: "churn-soak",
        ok: problems.is_empty(),
        problems,
        clients: a.clients,
        topics,
        rate: a.rate,
        size: a.size,
        duration_s: dur,
        read_ms: (a.min_read.as_millis() as u64, a.max_read.as_millis() as u64),
        rst_share: a.rst_share,
        connects_per_s: (counts.connects as f64 / dur * 10.0).round() / 10.0,
        counts,
        published,
        publish_ok,
        publish_first_error: publish_err,
        complete_clients: complete,
        warmup_s: warm,
        sample_every_s: every.as_secs_f64(),
        window,
        anon_kib_before: anon_before,
        anon_kib_end_of_churn: anon_end,
        anon_kib_after_tail: anon_tail,
        server_cpu_s: ((cpu1 - cpu0) * 100.0).round() / 100.0,
        series,
        command: crate::run::command_line(),
        unix_time: start_unix,
        load_avg_start: load_start,
        load_avg_end: sys::load_avg(),
    };
    println!("{}", serde_json::to_string(&report).expect("report"));
    if let Some(w) = &report.window {
        eprintln!(
            "soak: {} connects ({:.0}/s), {} resumes, {} deliveries, missing={} dup={} resets={}; \
             anonymous {}..{} KiB over {:.0}-{:.0} s: slope {:+.2} KiB/min, fitted {:+.2} %, \
             last vs first {:+.2} %",
            report.counts.connects,
            report.connects_per_s,
            report.counts.resumes,
            report.counts.deliveries,
            report.counts.missing,
            report.counts.duplicates,
            report.counts.resets,
            w.min_kib,
            w.max_kib,
            w.from_s,
            w.to_s,
            w.slope_kib_per_min,
            w.fitted_change_pct,
            w.change_pct
        );
    }
    for p in &report.problems {
        eprintln!("problem: {p}");
    }
    if report.ok { 0 } else { 1 }
}

fn window(pts: &[(f64, u64)]) -> Option<Window> {
    let f: Vec<(f64, f64)> = pts.iter().map(|&(t, k)| (t, k as f64)).collect();
    let (slope, _) = fit(&f)?;
    let mean = f.iter().map(|p| p.1).sum::<f64>() / f.len() as f64;
    let (from, to) = (pts[0].0, pts[pts.len() - 1].0);
    let first = pts[0].1;
    let last = pts[pts.len() - 1].1;
    let pct = |x: f64| (x * 10_000.0).round() / 10_000.0;
    Some(Window {
        from_s: from,
        to_s: to,
        samples: pts.len(),
        slope_kib_per_min: pct(slope * 60.0),
        mean_kib: (mean * 10.0).round() / 10.0,
        fitted_change_pct: pct(slope * (to - from) / mean * 100.0),
        first_kib: first,
        last_kib: last,
        change_pct: pct((last as f64 - first as f64) / first.max(1) as f64 * 100.0),
        min_kib: pts.iter().map(|p| p.1).min().unwrap_or(0),
        max_kib: pts.iter().map(|p| p.1).max().unwrap_or(0),
        max_dev_pct: pct(f
            .iter()
            .map(|p| (p.1 - mean).abs() / mean * 100.0)
            .fold(0.0, f64::max)),
    })
}

/// Publishes `events` events round-robin over `topics`; each topic's payloads are numbered
/// from 0. Returns (written, answered ok, events per topic, first error).
fn publish(
    sock: UnixStream,
    topics: &[String],
    rate: f64,
    size: usize,
    events: u64,
    start_ns: u64,
) -> (u64, u64, Vec<u64>, Option<String>) {
    let n = topics.len() as u64;
    let reader = match sock.try_clone() {
        Ok(r) => r,
        Err(e) => return (0, 0, vec![0; topics.len()], Some(format!("clone: {e}"))),
    };
    let answers = std::thread::spawn(move || {
        let mut ok = 0u64;
        let mut first_error = None;
        let mut r = BufReader::new(reader);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.contains("\"ok\":true") => ok += 1,
                Ok(_) => {
                    if first_error.is_none() {
                        first_error = Some(line.trim().to_string());
                    }
                }
            }
        }
        (ok, first_error)
    });
    let mut w = &sock;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut k = 0u64;
    let mut error = None;
    let due = |k: u64| start_ns + (k as f64 * 1e9 / rate) as u64;
    while k < events {
        sys::sleep_until_ns(due(k));
        let sent = sys::mono_ns();
        buf.clear();
        while k < events && due(k) <= sent && buf.len() < 60 * 1024 {
            let data = payload(
                Payload {
                    seq: k / n,
                    sched_ns: due(k),
                    sent_ns: sent,
                },
                size,
            );
            let _ = writeln!(
                buf,
                "{{\"topic\":\"{}\",\"data\":\"{data}\"}}",
                topics[(k % n) as usize]
            );
            k += 1;
        }
        if let Err(e) = w.write_all(&buf) {
            error = Some(format!("publisher: write: {e}"));
            break;
        }
    }
    // Every answer is in once the server has read everything we wrote: half-close.
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let (ok, answer_error) = answers.join().unwrap_or((0, None));
    let per_topic = (0..n).map(|t| k / n + u64::from(t < k % n)).collect();
    (k, ok, per_topic, error.or(answer_error))
}

#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
enum State {
    #[default]
    Idle,
    Connecting,
    AwaitHead,
    Streaming,
}

#[derive(Default)]
struct Conn {
    topic: usize,
    sock: Option<TcpStream>,
    state: State,
    head: Vec<u8>,
    parser: Parser,
    next_seq: u64,
    after_reset: bool,
    /// When this connection hangs up (0: not armed).
    hangup_at: u64,
    /// Events seen on this client at all (it hangs up only after one: a resume point).
    seen: u64,
}

struct Clients {
    poll: Poll,
    addr: SocketAddr,
    paths: Vec<String>,
    conns: Vec<Conn>,
    /// (when, client, hangup?) — reconnects (false) and hang-ups (true).
    timers: BinaryHeap<Reverse<(u64, usize, bool)>>,
    in_flight: usize,
    opened: usize,
    counts: Counts,
    rng: Rng,
    min_read_ns: u64,
    max_read_ns: u64,
    max_delay_ns: u64,
    rst_share: f64,
    churning: bool,
    live: Arc<Live>,
    errors: Vec<String>,
}

impl Clients {
    /// Runs until finished; returns how many clients got every event of their topic.
    fn run(&mut self, rx: &mpsc::Receiver<Cmd>, ready: &AtomicBool) -> usize {
        let mut events = Events::with_capacity(4096);
        let mut buf = vec![0u8; 256 * 1024];
        let mut finish: Option<(Vec<u64>, u64)> = None;
        loop {
            let now = sys::mono_ns();
            while self.opened < self.conns.len() && self.in_flight < MAX_IN_FLIGHT {
                let i = self.opened;
                self.opened += 1;
                self.connect(i);
            }
            if !ready.load(Ordering::Relaxed)
                && self.live.open.load(Ordering::Relaxed) as usize >= self.conns.len()
            {
                ready.store(true, Ordering::Relaxed);
            }
            self.timers_due(now);
            if let Some((want, until)) = &finish {
                let done = self.conns.iter().all(|c| c.next_seq >= want[c.topic]);
                if done || now >= *until {
                    break;
                }
            }
            let timeout = self
                .timers
                .peek()
                .map_or(Duration::from_millis(50), |Reverse((at, _, _))| {
                    Duration::from_nanos(at.saturating_sub(now))
                })
                .min(Duration::from_millis(50));
            for r in worker::poll_ready(&mut self.poll, &mut events, timeout) {
                self.on_ready(r.token, r.writable, r.readable, &mut buf);
            }
            if let Ok(Cmd::Finish { events, grace_ns }) = rx.try_recv() {
                self.churning = false;
                finish = Some((events, sys::mono_ns() + grace_ns));
            }
        }
        let complete = match &finish {
            Some((want, _)) => {
                for c in &self.conns {
                    self.counts.missing += want[c.topic].saturating_sub(c.next_seq);
                }
                self.conns
                    .iter()
                    .filter(|c| c.next_seq >= want[c.topic])
                    .count()
            }
            None => 0,
        };
        for c in &mut self.conns {
            c.sock = None;
        }
        complete
    }

    fn timers_due(&mut self, now: u64) {
        while let Some(&Reverse((at, i, hangup))) = self.timers.peek() {
            if at > now {
                break;
            }
            if !hangup && self.in_flight >= MAX_IN_FLIGHT {
                break;
            }
            self.timers.pop();
            let c = &mut self.conns[i];
            if hangup {
                if !self.churning || c.state != State::Streaming || c.hangup_at != at {
                    continue;
                }
                if c.seen == 0 {
                    // No resume point yet: read on until an event arrives.
                    c.hangup_at = now + 100_000_000;
                    self.timers.push(Reverse((c.hangup_at, i, true)));
                    continue;
                }
                self.hang_up(i, now);
            } else if self.conns[i].state == State::Idle {
                self.connect(i);
            }
        }
    }

    fn hang_up(&mut self, i: usize, now: u64) {
        let rst = (self.rng.below(1_000_000) as f64) < self.rst_share * 1e6;
        let c = &mut self.conns[i];
        if let Some(sock) = c.sock.take() {
            if rst {
                let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
                self.counts.rst_closes += 1;
            } else {
                self.counts.fin_closes += 1;
            }
            drop(sock);
        }
        c.parser.reset_connection();
        c.state = State::Idle;
        c.hangup_at = 0;
        self.live.open.fetch_sub(1, Ordering::Relaxed);
        self.reconnect_later(i, now);
    }

    fn reconnect_later(&mut self, i: usize, now: u64) {
        self.conns[i].state = State::Idle;
        let delay = if self.max_delay_ns == 0 {
            0
        } else {
            self.rng.below(self.max_delay_ns + 1)
        };
        self.timers.push(Reverse((now + delay, i, false)));
    }

    fn connect(&mut self, i: usize) {
        let source = IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1 + (i % SOURCES as usize) as u8));
        self.counts.connects += 1;
        self.live.connects.fetch_add(1, Ordering::Relaxed);
        let res = open_socket(self.addr, source, None).and_then(|mut s| {
            self.poll
                .registry()
                .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
                .map(|()| s)
        });
        match res {
            Ok(s) => {
                let c = &mut self.conns[i];
                c.sock = Some(s);
                c.state = State::Connecting;
                c.head.clear();
                self.in_flight += 1;
            }
            Err(e) => {
                self.counts.connect_errors += 1;
                self.error(format!("connect from {source}: {e}"));
                let later = sys::mono_ns() + 100_000_000;
                self.conns[i].state = State::Idle;
                self.timers.push(Reverse((later, i, false)));
            }
        }
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < 20 {
            self.errors.push(e);
        }
    }

    fn on_ready(&mut self, i: usize, writable: bool, readable: bool, buf: &mut [u8]) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if c.state == State::Connecting && (writable || readable) {
            let mut req = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
                self.paths[c.topic], self.addr
            )
            .into_bytes();
            let resumes = !c.parser.last_id.is_empty();
            if resumes {
                req.extend_from_slice(b"Last-Event-ID: ");
                req.extend_from_slice(c.parser.last_id.as_bytes());
                req.extend_from_slice(b"\r\n");
            }
            req.extend_from_slice(b"\r\n");
            let Some(sock) = c.sock.as_mut() else { return };
            match sock.write(&req) {
                Ok(n) if n == req.len() => {
                    c.state = State::AwaitHead;
                    if resumes {
                        self.counts.resumes += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Ok(_) => return self.failed(i, "request written partially".into()),
                Err(e) => return self.failed(i, format!("connect/request: {e}")),
            }
        }
        if !readable || !matches!(self.conns[i].state, State::AwaitHead | State::Streaming) {
            return;
        }
        loop {
            let Some(sock) = self.conns[i].sock.as_mut() else {
                return;
            };
            match sock.read(buf) {
                Ok(0) => return self.server_closed(i),
                Ok(n) => {
                    if !self.consume(i, &buf[..n]) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.server_closed(i),
            }
        }
    }

    fn failed(&mut self, i: usize, msg: String) {
        let c = &mut self.conns[i];
        let was = c.state;
        c.sock = None;
        c.parser.reset_connection();
        if matches!(was, State::Connecting | State::AwaitHead) {
            self.in_flight -= 1;
        } else if was == State::Streaming {
            self.live.open.fetch_sub(1, Ordering::Relaxed);
        }
        self.counts.connect_errors += 1;
        self.error(msg);
        self.reconnect_later(i, sys::mono_ns());
    }

    fn server_closed(&mut self, i: usize) {
        let was = self.conns[i].state;
        if was == State::Streaming {
            self.counts.server_closes += 1;
            let c = &mut self.conns[i];
            c.sock = None;
            c.parser.reset_connection();
            self.live.open.fetch_sub(1, Ordering::Relaxed);
            self.reconnect_later(i, sys::mono_ns());
        } else {
            self.failed(i, format!("closed by the server in state {was:?}"));
        }
    }

    /// Bytes of client `i`; false when the connection is gone.
    fn consume(&mut self, i: usize, bytes: &[u8]) -> bool {
        let now = sys::mono_ns();
        let c = &mut self.conns[i];
        let mut rest = bytes;
        let owned;
        if c.state == State::AwaitHead {
            c.head.extend_from_slice(bytes);
            let Some(end) = c.head.windows(4).position(|w| w == b"\r\n\r\n") else {
                if c.head.len() > MAX_HEAD {
                    self.failed(i, "response head too large".into());
                    return false;
                }
                return true;
            };
            let ok = c.head.starts_with(b"HTTP/1.1 200 ") || c.head.starts_with(b"HTTP/1.0 200 ");
            owned = c.head.split_off(end + 4);
            c.head = Vec::new();
            self.in_flight -= 1;
            if !ok {
                self.counts.other_statuses += 1;
                c.sock = None;
                c.parser.reset_connection();
                self.error("answer other than 200".into());
                self.reconnect_later(i, now);
                return false;
            }
            c.state = State::Streaming;
            self.counts.streams_opened += 1;
            self.live.open.fetch_add(1, Ordering::Relaxed);
            let span = self.max_read_ns - self.min_read_ns;
            c.hangup_at = now + self.min_read_ns + self.rng.below(span + 1);
            self.timers.push(Reverse((c.hangup_at, i, true)));
            rest = &owned;
        }
        let counts = &mut self.counts;
        let c = &mut self.conns[i];
        let (next_seq, after_reset, seen) = (&mut c.next_seq, &mut c.after_reset, &mut c.seen);
        let mut delivered = 0;
        c.parser.feed(rest, |item| {
            match item {
                Item::Event(p) => {
                    if p.seq < *next_seq {
                        counts.duplicates += 1;
                    } else {
                        let gap = p.seq - *next_seq;
                        if *after_reset {
                            counts.missing_after_reset += gap;
                        } else {
                            counts.missing += gap;
                        }
                        *next_seq = p.seq + 1;
                        counts.deliveries += 1;
                        delivered += 1;
                    }
                    *after_reset = false;
                    *seen += 1;
                }
                Item::Reset => {
                    *after_reset = true;
                    counts.resets += 1;
                }
                Item::Keepalive => counts.keepalives += 1,
                Item::Foreign => counts.foreign += 1,
            }
            Flow::Continue
        });
        self.live.deliveries.fetch_add(delivered, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares() {
        let pts: Vec<(f64, f64)> = (0..10).map(|t| (t as f64, 3.0 * t as f64 + 7.0)).collect();
        let (s, b) = fit(&pts).unwrap();
        assert!((s - 3.0).abs() < 1e-9 && (b - 7.0).abs() < 1e-9);
        assert!(fit(&pts[..1]).is_none());
        let w = window(&[(60.0, 1000), (120.0, 1000), (180.0, 1000)]).unwrap();
        assert_eq!(w.slope_kib_per_min, 0.0);
        assert_eq!(w.fitted_change_pct, 0.0);
        let w = window(&[(0.0, 1000), (60.0, 1010)]).unwrap();
        assert!((w.slope_kib_per_min - 10.0).abs() < 1e-9);
        assert!((w.fitted_change_pct - 10.0 / 1005.0 * 100.0).abs() < 1e-3);
    }

    #[test]
    fn anonymous_of_this_process() {
        assert!(anon_kib(std::process::id()).unwrap() > 0);
    }
}
