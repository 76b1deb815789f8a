//! `ssehub-loadtest`: load generators that talk to a server over loopback only.
//!
//! `idle`: opens N event streams (spread over source addresses in 127.0.0.0/8), holds them,
//! counts keepalives, and reports the server's private memory per stream (from
//! `/proc/PID/smaps_rollup`) and the kernel's (the `Slab` line of `/proc/meminfo`), measured
//! with the streams open minus the same before any was opened. Every run is bounded.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

struct Args {
    addr: SocketAddr,
    streams: usize,
    topic: String,
    hold: Duration,
    connect_timeout: Duration,
    server_pid: Option<u32>,
    sources: Vec<IpAddr>,
}

fn usage() -> ! {
    eprintln!(
        "usage: ssehub-loadtest idle --addr HOST:PORT --streams N [--topic T] [--hold 35s] \
         [--connect-timeout 60s] [--server-pid PID] [--sources 127.0.0.1,127.0.0.2]"
    );
    std::process::exit(2)
}

fn parse_secs(s: &str) -> Duration {
    let n = s.trim_end_matches('s');
    Duration::from_secs_f64(n.parse().unwrap_or_else(|_| usage()))
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    if it.next().as_deref() != Some("idle") {
        usage();
    }
    let mut args = Args {
        addr: "127.0.0.1:8080".parse().unwrap_or_else(|_| usage()),
        streams: 100,
        topic: "idle".into(),
        hold: Duration::from_secs(35),
        connect_timeout: Duration::from_secs(60),
        server_pid: None,
        sources: vec![IpAddr::from([127, 0, 0, 1])],
    };
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--addr" => args.addr = value.parse().unwrap_or_else(|_| usage()),
            "--streams" => args.streams = value.parse().unwrap_or_else(|_| usage()),
            "--topic" => args.topic = value,
            "--hold" => args.hold = parse_secs(&value),
            "--connect-timeout" => args.connect_timeout = parse_secs(&value),
            "--server-pid" => args.server_pid = Some(value.parse().unwrap_or_else(|_| usage())),
            "--sources" => {
                args.sources = value
                    .split(',')
                    .map(|s| s.parse().unwrap_or_else(|_| usage()))
                    .collect();
            }
            _ => usage(),
        }
    }
    if !args.addr.ip().is_loopback() || args.sources.iter().any(|s| !s.is_loopback()) {
        eprintln!("ssehub-loadtest: loopback targets and sources only");
        std::process::exit(2);
    }
    args
}

/// Per-stream client state: just enough to see the head and count keepalives.
struct Stream {
    sock: TcpStream,
    sent: bool,
    head_seen: bool,
    closed: bool,
    tail: Vec<u8>,
    keepalives: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    private_kib: u64,
    slab_kib: u64,
}

fn field_kib(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn memory(pid: Option<u32>) -> Memory {
    let slab_kib = std::fs::read_to_string("/proc/meminfo").map_or(0, |t| field_kib(&t, "Slab:"));
    let private_kib = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .map_or(0, |t| {
            field_kib(&t, "Private_Clean:") + field_kib(&t, "Private_Dirty:")
        });
    Memory {
        private_kib,
        slab_kib,
    }
}

fn nofile_soft() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

fn connect(addr: SocketAddr, source: IpAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(source, 0).into())?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(115) => {} // EINPROGRESS
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

fn main() {
    let args = parse_args();
    let limit = nofile_soft() as usize;
    if args.streams + 32 > limit {
        eprintln!(
            "ssehub-loadtest: {} streams need more than this process's {limit} descriptors; \
             run several processes (one holds at most {})",
            args.streams,
            limit.saturating_sub(32)
        );
        std::process::exit(2);
    }
    let before = memory(args.server_pid);
    let request = format!(
        "GET /events?topic={} HTTP/1.1\r\nHost: loadtest\r\n\r\n",
        args.topic
    );
    let mut poll = Poll::new().expect("poll");
    let mut events = Events::with_capacity(4096);
    let mut streams: Vec<Stream> = Vec::with_capacity(args.streams);
    let start = Instant::now();
    let mut scratch = vec![0u8; 16 * 1024];
    let mut ready = 0usize;
    let mut connect_errors = 0usize;
    let mut ready_at = None;
    let deadline = start + args.connect_timeout + args.hold;
    let mut hold_until = None;
    loop {
        // Open more streams, a batch per turn, so the server's backlog is not overrun.
        let mut batch = 0;
        while streams.len() < args.streams && batch < 256 && streams.len() - ready < 2048 {
            let source = args.sources[streams.len() % args.sources.len()];
            match connect(args.addr, source) {
                Ok(mut sock) => {
                    let token = Token(streams.len());
                    poll.registry()
                        .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                        .expect("register");
                    streams.push(Stream {
                        sock,
                        sent: false,
                        head_seen: false,
                        closed: false,
                        tail: Vec::new(),
                        keepalives: 0,
                    });
                }
                Err(e) => {
                    connect_errors += 1;
                    if connect_errors == 1 {
                        eprintln!("connect failed: {e}");
                    }
                    if connect_errors > 1000 {
                        eprintln!("ssehub-loadtest: too many connect errors");
                        std::process::exit(1);
                    }
                    break;
                }
            }
            batch += 1;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if ready == args.streams && ready_at.is_none() {
            ready_at = Some(now);
            hold_until = Some(now + args.hold);
            eprintln!(
                "ready streams={ready} after_ms={}",
                (now - start).as_millis()
            );
        }
        if hold_until.is_some_and(|h| now >= h) {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .expect("poll");
        for ev in events.iter() {
            let s = &mut streams[ev.token().0];
            if s.closed {
                continue;
            }
            if ev.is_writable() && !s.sent {
                match s.sock.write(request.as_bytes()) {
                    Ok(n) if n == request.len() => s.sent = true,
                    _ => {}
                }
            }
            if ev.is_readable() || ev.is_read_closed() {
                loop {
                    match s.sock.read(&mut scratch) {
                        Ok(0) => {
                            s.closed = true;
                            break;
                        }
                        Ok(n) => {
                            s.tail.extend_from_slice(&scratch[..n]);
                            if !s.head_seen
                                && let Some(i) = s.tail.windows(4).position(|w| w == b"\r\n\r\n")
                            {
                                if s.tail.starts_with(b"HTTP/1.1 200") {
                                    s.head_seen = true;
                                    ready += 1;
                                } else {
                                    s.closed = true;
                                }
                                s.tail.drain(..i + 4);
                            }
                            if s.head_seen {
                                s.keepalives +=
                                    s.tail.windows(2).filter(|w| w == b":\n").count() as u32;
                                let keep = s.tail.len().min(1);
                                s.tail.drain(..s.tail.len() - keep);
                                s.tail.shrink_to_fit();
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            s.closed = true;
                            break;
                        }
                    }
                }
            }
        }
    }
    let during = memory(args.server_pid);
    let open = streams.iter().filter(|s| s.head_seen && !s.closed).count();
    let closed = streams.iter().filter(|s| s.closed).count();
    let keepalives: u64 = streams.iter().map(|s| u64::from(s.keepalives)).sum();
    let n = open.max(1) as f64;
    let private_per_stream = (during.private_kib as f64 - before.private_kib as f64) * 1024.0 / n;
    let slab_per_stream_one_side =
        (during.slab_kib as f64 - before.slab_kib as f64) * 1024.0 / n / 2.0;
    println!(
        "{{\"scenario\":\"idle\",\"streams_requested\":{},\"streams_open\":{open},\"streams_closed\":{closed},\
         \"keepalives_seen\":{keepalives},\"hold_s\":{},\"server_private_kib_before\":{},\"server_private_kib_during\":{},\
         \"server_private_bytes_per_stream\":{private_per_stream:.1},\"kernel_slab_bytes_per_stream_one_side\":{slab_per_stream_one_side:.1}}}",
        args.streams,
        args.hold.as_secs_f64(),
        before.private_kib,
        during.private_kib,
    );
    if open < args.streams {
        std::process::exit(1);
    }
}
