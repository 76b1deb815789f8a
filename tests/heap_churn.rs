//! Issue 14 part 2: the server's live heap does not grow with the number of connects or
//! events already served. The real loop runs in this process (`Server::bind` + `run` on a
//! thread) under a counting global allocator; clients connect, read a little, hang up
//! (half FIN, half RST) and resume with `Last-Event-ID` while a producer publishes on ten
//! topics. Live bytes are read at two quiet points — after a warm-up, and after many more
//! connects and events — each once every client has gone and history has expired
//! (`history.max_age` is short), and may differ only by a small constant.
//!
//! The allocator counts the whole process: the client threads keep their buffers from
//! one connection to the next, and are parked at the quiet points.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are
// updated on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TOPICS: usize = 10;
const CLIENTS: usize = 4;
/// Events per second, paced without catching up (so that what the server keeps for the
/// last `write_timeout` is bounded by the rate, not by the run's length).
const RATE: u64 = 1500;
const WARMUP_EVENTS: u64 = 6_000;
const MORE_EVENTS: u64 = 20_000;
/// Growth allowed between the two quiet points: a constant (hash tables and slab
/// capacities that follow the peak of concurrent connections), not per connect.
const SLACK: isize = 32 * 1024;
const MAX_AGE: &str = "1s";
/// Quiet time before a measurement: history (`max_age`, pruned every second), the timers of
/// closed streams (keepalive, write timeout) and lingering closes have all run out.
const QUIET: Duration = Duration::from_millis(3500);

struct Shared {
    addr: SocketAddr,
    pause: AtomicBool,
    parked: AtomicUsize,
    stop: AtomicBool,
    connects: AtomicU64,
    resumes: AtomicU64,
    events_seen: AtomicU64,
}

/// One client thread: connect, read the head and an event or two (or 30 ms), hang up by
/// FIN or RST, resume on another topic with the last id seen there.
fn client(me: usize, sh: Arc<Shared>) {
    let mut req = Vec::with_capacity(512);
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = [0u64; TOPICS];
    let mut n = me;
    while !sh.stop.load(Ordering::Relaxed) {
        if sh.pause.load(Ordering::Relaxed) {
            sh.parked.fetch_add(1, Ordering::SeqCst);
            while sh.pause.load(Ordering::Relaxed) && !sh.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            sh.parked.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        n += 1;
        let topic = n % TOPICS;
        let Ok(mut s) = TcpStream::connect(sh.addr) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        sh.connects.fetch_add(1, Ordering::Relaxed);
        req.clear();
        write!(
            req,
            "GET /events?topic=t{topic} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
        )
        .unwrap();
        if last[topic] > 0 {
            write!(req, "Last-Event-ID: {}\r\n", last[topic]).unwrap();
            sh.resumes.fetch_add(1, Ordering::Relaxed);
        }
        req.extend_from_slice(b"\r\n");
        if s.write_all(&req).is_err() {
            continue;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
        let start = Instant::now();
        let mut len = 0;
        let mut events = 0;
        let want = 1 + n % 3;
        while start.elapsed() < Duration::from_millis(30) && len < buf.len() {
            match s.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(k) => {
                    let from = len.saturating_sub(3);
                    len += k;
                    // Count complete events and remember the last `id: N` line.
                    let mut i = from;
                    while let Some(p) = buf[i..len].windows(2).position(|w| w == b"\n\n") {
                        events += 1;
                        i += p + 2;
                    }
                    let mut j = 0;
                    while let Some(p) = buf[j..len].windows(4).position(|w| w == b"id: ") {
                        let at = j + p + 4;
                        let Some(e) = buf[at..len].iter().position(|&b| b == b'\n') else {
                            break;
                        };
                        if let Some(id) = std::str::from_utf8(&buf[at..at + e])
                            .ok()
                            .and_then(|v| v.parse().ok())
                        {
                            last[topic] = id;
                        }
                        j = at + e;
                    }
                    if events > want {
                        break;
                    }
                }
                Err(_) => {}
            }
        }
        sh.events_seen.fetch_add(events as u64, Ordering::Relaxed);
        if n.is_multiple_of(2) {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
        drop(s);
    }
}

/// Publishes `count` events round-robin on the topics at `RATE`, reading the answers.
fn publish(w: &mut UnixStream, r: &mut BufReader<UnixStream>, count: u64, line: &mut String) {
    let batch = RATE / 100;
    let mut out = Vec::with_capacity(64 * 1024);
    let mut sent = 0;
    while sent < count {
        let t = Instant::now();
        out.clear();
        for _ in 0..batch.min(count - sent) {
            let topic = sent as usize % TOPICS;
            writeln!(
                out,
                "{{\"topic\":\"t{topic}\",\"data\":\"event {sent} xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}"
            )
            .unwrap();
            sent += 1;
        }
        w.write_all(&out).unwrap();
        let k = out.iter().filter(|&&b| b == b'\n').count();
        for _ in 0..k {
            line.clear();
            r.read_line(line).unwrap();
            assert!(line.contains("\"ok\":true"), "publish answered {line}");
        }
        // 10 ms per batch, never catching up.
        if let Some(rest) = Duration::from_millis(10).checked_sub(t.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

fn quiet(sh: &Shared) -> (isize, u64) {
    sh.pause.store(true, Ordering::SeqCst);
    while sh.parked.load(Ordering::SeqCst) < CLIENTS {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(QUIET);
    (LIVE.load(Ordering::SeqCst), ALLOCS.load(Ordering::SeqCst))
}

#[test]
fn live_heap_does_not_grow_with_connects_or_events() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ingest.sock");
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\
         [ingest]\nsocket = \"{}\"\n\
         [streams]\nkeepalive = \"1s\"\nwrite_timeout = \"1s\"\n\
         [history]\nmax_age = \"{MAX_AGE}\"\n",
        socket.display()
    );
    let config = ssehub::config::Config::parse(&text).unwrap();
    // The server is not `Send`: bound on the loop's own thread, which hands back its
    // address and stop handle.
    let (tx, rx) = std::sync::mpsc::channel();
    let loop_thread = std::thread::spawn(move || {
        let mut server = ssehub::event_loop::Server::bind(config).unwrap();
        tx.send((server.http_addr().unwrap(), server.stop_handle()))
            .unwrap();
        server.run()
    });
    let (addr, stop) = rx.recv().unwrap();

    let sh = Arc::new(Shared {
        addr,
        pause: AtomicBool::new(false),
        parked: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        connects: AtomicU64::new(0),
        resumes: AtomicU64::new(0),
        events_seen: AtomicU64::new(0),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let sh = sh.clone();
            std::thread::spawn(move || client(i, sh))
        })
        .collect();
    let mut w = UnixStream::connect(&socket).unwrap();
    let mut r = BufReader::with_capacity(64 * 1024, w.try_clone().unwrap());
    let mut line = String::with_capacity(1024);

    publish(&mut w, &mut r, WARMUP_EVENTS, &mut line);
    let (live0, allocs0) = quiet(&sh);
    let connects0 = sh.connects.load(Ordering::SeqCst);
    sh.pause.store(false, Ordering::SeqCst);

    publish(&mut w, &mut r, MORE_EVENTS, &mut line);
    let (live1, allocs1) = quiet(&sh);
    let connects = sh.connects.load(Ordering::SeqCst) - connects0;

    sh.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    drop(w);
    stop.stop();
    loop_thread.join().unwrap().unwrap();

    let growth = live1 - live0;
    eprintln!(
        "live heap {live0} B after warm-up ({connects0} connects, {WARMUP_EVENTS} events), \
         {live1} B after {connects} more connects ({} resumes in all, {} events read) and \
         {MORE_EVENTS} more events: {growth:+} B ({:+.2} B per connect, {:+.2} B per event); \
         {:.1} allocations per connect+event",
        sh.resumes.load(Ordering::SeqCst),
        sh.events_seen.load(Ordering::SeqCst),
        growth as f64 / connects as f64,
        growth as f64 / MORE_EVENTS as f64,
        (allocs1 - allocs0) as f64 / connects as f64,
    );
    assert!(
        connects >= 5_000,
        "only {connects} connects: the run says little"
    );
    assert!(
        growth <= SLACK,
        "live heap grew by {growth} B over {connects} connects and {MORE_EVENTS} events \
         (allowed: {SLACK} B)"
    );
}
