//! protocol 4 (limits) over real sockets against the real binary: the global connection cap
//! (`503` + `Retry-After`), the per-client cap (`429` + `Retry-After`) counted per peer
//! address or per `X-Forwarded-For` entry of a trusted proxy (never anyone else's), both
//! reached exactly at the configured numbers and freed on close; the descriptor limit raised
//! and logged at start; `http.overload_as_retry` (protocol 2).
//!
//! Other client addresses are loopback addresses other than 127.0.0.1: the client socket is
//! bound to 127.0.0.2 before it connects.
mod common;
use common::*;
use socket2::{Domain, Socket, Type};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const OTHER: &str = "127.0.0.2";
const LOCAL: &str = "127.0.0.1";

/// A client connected to `addr` from the local address `source`.
fn connect_from(addr: SocketAddr, source: &str) -> Client {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let local: SocketAddr = format!("{source}:0").parse().expect("source address");
    sock.bind(&local.into()).expect("bind the source address");
    sock.connect(&addr.into()).expect("connect");
    Client::from_stream(TcpStream::from(sock))
}

fn stream_request(topic: &str, headers: &str) -> String {
    format!("GET /events?topic={topic} HTTP/1.1\r\nHost: test\r\n{headers}\r\n")
}

/// Opens a stream from `source` that must be served (`200`, `retry:`).
fn stream_from(server: &Server, source: &str, headers: &str) -> Client {
    let mut c = connect_from(server.addr, source);
    c.send(&stream_request("caps:held", headers));
    let head = c.read_head();
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n"),
        "expected a stream from {source} with {headers:?}, got {head:?}"
    );
    let retry = c.read_line();
    assert!(retry.starts_with("retry: "), "{retry:?}");
    c
}

/// A stream request from `source` that must be refused by a cap with `status`: one plain
/// line, `Retry-After` in seconds, and the connection closed. Returns the reason.
fn capped(server: &Server, source: &str, headers: &str, status: u16) -> String {
    let mut c = connect_from(server.addr, source);
    c.send(&stream_request("caps:held", headers));
    let (head, reason) = read_plain(&mut c, status);
    let after: u64 = header_of(&head, "retry-after")
        .unwrap_or_else(|| panic!("{status} without Retry-After: {head:?}"))
        .parse()
        .expect("Retry-After in seconds");
    assert!(after > 0, "{head:?}");
    let rest = c
        .read_to_close(Duration::from_secs(5))
        .expect("connection left open after a cap answer");
    assert!(rest.is_empty(), "bytes after the answer: {rest:?}");
    reason
}

/// Retries a stream from `source` until it is served (a slot is freed once the server has
/// seen a close); panics after 5 s.
fn eventually_stream(server: &Server, source: &str, headers: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = connect_from(server.addr, source);
        c.send(&stream_request("caps:held", headers));
        let head = c.read_head();
        if head.starts_with("HTTP/1.1 200 OK\r\n") {
            let retry = c.read_line();
            assert!(retry.starts_with("retry: "), "{retry:?}");
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no slot freed after a close: {head:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every held stream is still open and live: it receives a new event (after any earlier
/// ones it has not read yet).
fn all_live(server: &Server, held: &mut [Client]) {
    let id = server.producer().publish("caps:held", "still here");
    for c in held.iter_mut() {
        loop {
            let block = c.read_event();
            let got = event_id(&block).expect("an event with an id");
            assert!(got <= id, "{block:?}");
            if got == id {
                break;
            }
        }
    }
}

fn xff(client: &str) -> String {
    format!("X-Forwarded-For: {client}\r\n")
}

#[test]
fn global_cap_is_exact_and_a_close_frees_a_slot() {
    let server = Server::start_with(&[("http", "max_connections = 5")]);
    assert!(
        server.log_contains("max_connections=5"),
        "{:?}",
        server.log.lock().unwrap()
    );
    let mut held: Vec<Client> = (0..5).map(|_| stream_from(&server, LOCAL, "")).collect();
    let reason = capped(&server, LOCAL, "", 503);
    assert!(reason.contains("limit"), "{reason:?}");
    // The cap is global: another address is refused too, and so is a non-stream request.
    capped(&server, OTHER, "", 503);
    let mut c = Client::connect(server.addr);
    c.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    read_plain(&mut c, 503);
    all_live(&server, &mut held);

    drop(held.pop());
    held.push(eventually_stream(&server, LOCAL, ""));
    capped(&server, LOCAL, "", 503);
    all_live(&server, &mut held);
}

#[test]
fn per_ip_cap_is_exact_per_address_and_a_close_frees_a_slot() {
    let server = Server::start_with(&[("http", "max_per_ip = 3")]);
    let mut local: Vec<Client> = (0..3).map(|_| stream_from(&server, LOCAL, "")).collect();
    let reason = capped(&server, LOCAL, "", 429);
    assert!(reason.contains("too many"), "{reason:?}");
    // Another source address has a quota of its own.
    let mut other: Vec<Client> = (0..3).map(|_| stream_from(&server, OTHER, "")).collect();
    capped(&server, OTHER, "", 429);
    capped(&server, LOCAL, "", 429);
    all_live(&server, &mut local);
    all_live(&server, &mut other);

    drop(local.pop());
    local.push(eventually_stream(&server, LOCAL, ""));
    capped(&server, LOCAL, "", 429);
    // A request that is answered and closed gives its slot back too.
    drop(other.pop());
    assert!(
        wait_for(Duration::from_secs(5), || {
            let mut c = connect_from(server.addr, OTHER);
            c.send("GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            c.read_response().0 == 404
        }),
        "no slot freed after a close"
    );
    other.push(eventually_stream(&server, OTHER, ""));
    capped(&server, OTHER, "", 429);
}

#[test]
fn trusted_proxy_forwarded_clients_are_counted_and_others_ignored() {
    let server =
        Server::start_with(&[("http", "max_per_ip = 3\ntrusted_proxies = [\"127.0.0.1\"]")]);
    let a = xff("198.51.100.7");
    let mut held: Vec<Client> = (0..3).map(|_| stream_from(&server, LOCAL, &a)).collect();
    let reason = capped(&server, LOCAL, &a, 429);
    assert!(reason.contains("too many"), "{reason:?}");
    // Another forwarded client of the same proxy is fine, and so is a fourth connection
    // from the proxy itself: the proxy's own address is not what is counted.
    held.push(stream_from(&server, LOCAL, &xff("198.51.100.8")));
    // Only the entry the proxy added (the last one) counts; earlier ones come from the client.
    held.push(stream_from(
        &server,
        LOCAL,
        &xff("198.51.100.7, 198.51.100.9"),
    ));
    capped(&server, LOCAL, &xff("198.51.100.9, 198.51.100.7"), 429);
    // Two X-Forwarded-For headers form one list.
    capped(&server, LOCAL, &format!("{}{a}", xff("198.51.100.9")), 429);

    // From an untrusted peer the header is ignored: counted as 127.0.0.2, whatever it says.
    let mut untrusted: Vec<Client> = ["198.51.100.7", "203.0.113.1", "203.0.113.2"]
        .iter()
        .map(|f| stream_from(&server, OTHER, &xff(f)))
        .collect();
    capped(&server, OTHER, &xff("203.0.113.3"), 429);
    capped(&server, OTHER, "", 429);
    all_live(&server, &mut held);
    all_live(&server, &mut untrusted);

    // Closing a forwarded client's stream frees its slot.
    drop(held.remove(0));
    held.push(eventually_stream(&server, LOCAL, &a));
    capped(&server, LOCAL, &a, 429);
}

/// The real binary started through `sh -c "ulimit ARGS && exec ssehub serve ..."`, so that it
/// starts with the given descriptor limits.
fn start_limited(ulimit: &str, sections: &[(&str, &str)]) -> Server {
    Server::start_with_command(sections, |config| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "ulimit {ulimit} && exec \"$0\" serve --config \"$1\" --log-level debug"
            ))
            .arg(BIN)
            .arg(config);
        cmd
    })
}

/// CPU time (user + system) process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The value of `key=` in a log line.
fn log_value(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn descriptor_limit_is_raised_to_the_hard_limit_and_logged() {
    // Start with a low soft limit, as a shell or an init system may leave it.
    let server = start_limited("-Sn 256", &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id()))
        .expect("/proc/PID/limits");
    let lines = server.log_lines();
    let fd_line = lines
        .iter()
        .find(|l| l.contains("file descriptor limit"))
        .unwrap_or_else(|| panic!("no `file descriptor limit` line: {lines:?}"));
    assert_eq!(log_value(fd_line, "nofile_soft_before="), 256, "{fd_line}");
    let soft = log_value(fd_line, "nofile_soft=");
    let hard = log_value(fd_line, "nofile_hard=");
    assert_eq!(
        soft, hard,
        "soft limit not raised to the hard limit: {fd_line}"
    );
    // The process really runs with it.
    let row = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files row");
    let nums: Vec<&str> = row.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, [hard.to_string(), hard.to_string()], "{row}");
    // With max_connections = 0 the cap is derived from the raised limit, with a reserve.
    let listening = lines
        .iter()
        .find(|l| l.contains("listening http="))
        .unwrap();
    let cap = log_value(listening, "max_connections=");
    assert!(
        cap > 256 && cap < hard,
        "max_connections={cap} with nofile={hard}"
    );
}

/// Reads a response head from `c` within `wait`; None when nothing (complete) arrives.
fn head_within(c: &mut Client, wait: Duration) -> Option<String> {
    use std::io::Read;
    c.sock.set_read_timeout(Some(wait)).unwrap();
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match c.sock.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(String::from_utf8_lossy(&buf[..i + 4]).into_owned());
        }
    }
    None
}

#[test]
fn out_of_descriptors_pauses_accept_without_spinning_and_resumes() {
    // A hard limit of 64 descriptors the server cannot raise, and a cap above it, so that
    // accept runs out of descriptors before the cap is reached.
    let server = start_limited("-n 64", &[("http", "max_connections = 1000")]);
    let mut served = Vec::new();
    let mut waiting = Vec::new();
    for _ in 0..100 {
        let mut c = Client::connect(server.addr);
        c.send(&stream_request("caps:held", ""));
        if !waiting.is_empty() {
            waiting.push(c);
            continue;
        }
        match head_within(&mut c, Duration::from_millis(500)) {
            Some(head) if head.starts_with("HTTP/1.1 200 OK\r\n") => served.push(c),
            Some(head) => panic!("unexpected answer below the cap: {head:?}"),
            None => waiting.push(c),
        }
        if waiting.len() >= 20 {
            break;
        }
    }
    assert!(
        served.len() >= 20 && served.len() < 64,
        "served {} streams with 64 descriptors",
        served.len()
    );
    assert!(
        waiting.len() >= 10,
        "only {} connections left waiting",
        waiting.len()
    );
    assert!(
        wait_for(Duration::from_secs(2), || server
            .log_lines()
            .iter()
            .any(|l| l.contains("out of file descriptors"))),
        "no log line about running out of descriptors"
    );
    // A producer arrives while the server is out of descriptors too.
    let mut producer = Producer::connect(&server.socket);
    producer.send_raw(b"{\"topic\":\"caps:held\",\"data\":\"back\"}\n");
    // Out of descriptors with connections waiting in both backlogs: no busy loop, and
    // one log line for the episode (not one per retry every 100 ms).
    let before = cpu_ticks(server.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(server.pid()) - before;
    assert!(
        used <= 40,
        "{used} ticks of CPU in 2 s while out of descriptors"
    );
    let paused = server
        .log_lines()
        .iter()
        .filter(|l| l.contains("out of file descriptors"))
        .count();
    assert_eq!(paused, 1, "the pause is logged once per episode");
    // Freed descriptors are used again: every waiting connection is served...
    served.truncate(served.len() - waiting.len() - 5);
    for c in waiting.iter_mut() {
        let head = head_within(c, Duration::from_secs(5)).expect("waiting connection never served");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
    }
    // ...and so is the waiting producer, whose event reaches the streams.
    producer
        .sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let read = BufReader::new(producer.sock.try_clone().unwrap()).read_line(&mut answer);
    assert!(
        matches!(read, Ok(n) if n > 0),
        "a producer that connected while the server was out of descriptors is still not \
         accepted 5 s after descriptors were freed ({read:?})"
    );
    let id = parse_ok(answer.trim_end()).unwrap_or_else(|| panic!("{answer}"));
    for c in served.iter_mut().take(3) {
        let block = c.read_event();
        assert_eq!(event_id(&block), Some(id), "{block:?}");
    }
}

/// protocol 2: with `http.overload_as_retry = true` a capped stream request gets a `200` stream
/// that carries only a `retry:` of at least the `Retry-After` value, and is closed.
fn check_overload_as_retry(server: &Server, source: &str, headers: &str) {
    // A non-stream request at the cap still gets the plain answer, with its Retry-After.
    let mut c = connect_from(server.addr, source);
    c.send(&format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\n{headers}\r\n"
    ));
    let (status, head, _) = c.read_response();
    assert!(matches!(status, 429 | 503), "{head:?}");
    let after_s: u64 = header_of(&head, "retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    for _ in 0..3 {
        let mut c = connect_from(server.addr, source);
        c.send(&stream_request("caps:other", headers));
        let head = c.read_head();
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n"),
            "a capped stream request with overload_as_retry: {head:?}"
        );
        assert_eq!(
            header_of(&head, "content-type").as_deref(),
            Some("text/event-stream; charset=utf-8")
        );
        let body = c
            .read_to_close(Duration::from_secs(5))
            .expect("the retry stream is closed");
        let body = String::from_utf8(body).expect("UTF-8");
        let retry_ms: u64 = body
            .strip_prefix("retry: ")
            .and_then(|r| r.strip_suffix('\n'))
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("body is not one retry line: {body:?}"));
        assert!(
            retry_ms >= after_s * 1000,
            "retry {retry_ms} ms below Retry-After {after_s} s"
        );
    }
}

#[test]
fn overload_as_retry_turns_the_global_cap_into_a_retry_stream() {
    let server = Server::start_with(&[("http", "max_connections = 1\noverload_as_retry = true")]);
    let _held = stream_from(&server, LOCAL, "");
    check_overload_as_retry(&server, LOCAL, "");
}

#[test]
fn overload_as_retry_turns_the_per_ip_cap_into_a_retry_stream() {
    let server = Server::start_with(&[("http", "max_per_ip = 1\noverload_as_retry = true")]);
    let _held = stream_from(&server, LOCAL, "");
    check_overload_as_retry(&server, LOCAL, "");
}

#[test]
fn overload_as_retry_also_covers_clients_behind_a_trusted_proxy() {
    // The per-client cap of a forwarded client is decided once its request head is read;
    // with overload_as_retry a capped stream request gets the retry stream there too
    // (it used to get a 429, which makes a browser give up for good).
    let server = Server::start_with(&[(
        "http",
        "max_per_ip = 1\ntrusted_proxies = [\"127.0.0.1\"]\noverload_as_retry = true",
    )]);
    let a = xff("198.51.100.7");
    let _held = stream_from(&server, LOCAL, &a);
    check_overload_as_retry(&server, LOCAL, &a);
    // One /healthz and three stream requests were capped: each counted once.
    let mut c = Client::connect(server.addr);
    c.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let (_, _, body) = c.read_response();
    assert!(
        body.lines()
            .any(|l| l == "ssehub_rejected_requests_total{status=\"429\"} 4"),
        "{body}"
    );
}

#[test]
fn producers_are_capped_so_the_log_keeps_its_descriptors() {
    // 100 descriptors: 6 producers (100 / 16), 30 connections, the rest kept for the log.
    // Before the cap, 150 producers took every descriptor, HTTP accept paused and the log
    // failed with `Too many open files`.
    let data = tempfile::tempdir().expect("data dir");
    let history = format!(
        "data_dir = {:?}\nmax_log_bytes = 0",
        data.path().display().to_string()
    );
    let server = start_limited("-n 100", &[("history", &history)]);
    let listening = server
        .log_lines()
        .iter()
        .find(|l| l.contains("listening http="))
        .cloned()
        .expect("listening line");
    assert_eq!(log_value(&listening, "max_producers="), 6, "{listening}");
    assert_eq!(log_value(&listening, "max_connections="), 30, "{listening}");

    let mut served = Vec::new();
    let mut refused = 0;
    for i in 0..150 {
        let mut p = Producer::connect(&server.socket);
        // A refused producer may be closed before the line arrives: ignore a failed write
        // and read the answer either way.
        let line = format!("{{\"topic\":\"caps:p\",\"data\":\"{i}\"}}\n");
        let _ = std::io::Write::write_all(&mut p.sock, line.as_bytes());
        let answer = p.read_answer();
        if parse_ok(&answer).is_some() {
            served.push(p);
        } else {
            let reason = parse_error_answer(&answer).unwrap_or_else(|| panic!("{answer}"));
            assert_eq!(
                reason,
                "too many producers connected (ingest.max_producers = 6)"
            );
            refused += 1;
        }
    }
    assert_eq!(served.len(), 6);
    assert_eq!(refused, 144);
    // With every producer slot taken, the log still writes and HTTP still accepts.
    for p in served.iter_mut() {
        assert!(parse_ok(&p.request("{\"topic\":\"caps:p\",\"data\":\"more\"}")).is_some());
    }
    let mut c = Client::connect(server.addr);
    c.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().0, 200);
    assert!(
        !server
            .log_lines()
            .iter()
            .any(|l| l.contains("Too many open files") || l.contains("out of file descriptors")),
        "{:?}",
        server.log_lines()
    );
}
