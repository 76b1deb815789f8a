//! protocol 2.3: a subscriber that does not read is disconnected when its pending output passes
//! `streams.max_pending_bytes`, or when pending output is not written within
//! `streams.write_timeout`; a reading subscriber on the same topic loses nothing and is not
//! delayed, and the server stays responsive.
mod common;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Payload bytes per event: large, so that socket buffers fill quickly.
const PAYLOAD: usize = 32 * 1024;

fn payload(i: usize) -> String {
    let mut s = format!("{i:06}:");
    s.push_str(&"x".repeat(PAYLOAD - s.len()));
    s
}

/// A stream whose receive buffer is tiny (set before connect) and which reads only the head
/// and the `retry:` line. Returns the socket and any event bytes read past the retry line.
fn non_reading_subscriber(addr: SocketAddr, topic: &str) -> (TcpStream, Vec<u8>) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    s.connect(&addr.into()).expect("connect");
    let mut sock: TcpStream = s.into();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(format!("GET /events?topic={topic} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        if let Some(h) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = &got[h + 4..];
            if let Some(nl) = body.iter().position(|&b| b == b'\n') {
                assert!(
                    got.starts_with(b"HTTP/1.1 200 OK\r\n") && body.starts_with(b"retry: "),
                    "unexpected start {:?}",
                    String::from_utf8_lossy(&got)
                );
                let rest = body[nl + 1..].to_vec();
                return (sock, rest);
            }
        }
        let n = sock.read(&mut chunk).expect("read head");
        assert!(n > 0, "EOF before the stream head");
        got.extend_from_slice(&chunk[..n]);
    }
}

/// Reads `sock` until EOF (or a reset); None if it stays open past `timeout`.
fn read_until_eof(sock: &mut TcpStream, mut got: Vec<u8>, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        match sock.read(&mut chunk) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() > deadline {
                    return None;
                }
            }
            Err(_) => return Some(got), // reset: also a disconnect
        }
    }
}

/// Ids of the complete events in `bytes`, checking each payload.
fn complete_event_ids(bytes: &[u8]) -> Vec<u64> {
    let text = String::from_utf8_lossy(bytes);
    let mut ids = Vec::new();
    let mut rest: &str = &text;
    while let Some(end) = rest.find("\n\n") {
        let block = &rest[..end];
        rest = &rest[end + 2..];
        let mut lines = block.lines();
        let id = lines
            .next()
            .and_then(|l| l.strip_prefix("id: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!("event without id line: {:?}", &block[..block.len().min(80)])
            });
        let data = lines.next().expect("data line");
        assert!(
            data.starts_with("data: ") && data.len() == "data: ".len() + PAYLOAD,
            "bad data line in event {id}"
        );
        ids.push(id);
    }
    ids
}

/// A reading subscriber in its own thread: records the id of every event it receives and
/// checks the payload; stops after `n` events or on EOF/timeout.
fn spawn_reader(
    mut c: Client,
    n: usize,
    ids: Arc<Mutex<Vec<u64>>>,
) -> JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        c.set_timeout(Duration::from_secs(20));
        for i in 0..n {
            let ev = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.read_event()))
                .map_err(|_| format!("reader: EOF or timeout after {i} events"))?;
            let mut lines = ev.lines();
            let id: u64 = lines
                .next()
                .and_then(|l| l.strip_prefix("id: "))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("reader: bad event {:?}", &ev[..ev.len().min(80)]))?;
            let data = lines.next().unwrap_or_default();
            if data.get(6..12) != Some(&format!("{i:06}")[..]) || data.len() != 6 + PAYLOAD {
                return Err(format!("reader: event {i} has wrong payload (id {id})"));
            }
            ids.lock().unwrap().push(id);
        }
        Ok(())
    })
}

/// Publishes events `range` in lockstep with the reader (each is published once the reader
/// has all earlier ones, so the reader is never behind and never at risk itself).
fn publish_lockstep(
    p: &mut Producer,
    topic: &str,
    range: std::ops::Range<usize>,
    received: &Arc<Mutex<Vec<u64>>>,
    published: &mut Vec<u64>,
) {
    for i in range {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ok = true;
        while received.lock().unwrap().len() < i {
            if Instant::now() > deadline {
                ok = false;
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(
            ok,
            "reading subscriber stalled at {} of {i} events",
            received.lock().unwrap().len()
        );
        let line = format!("{{\"topic\":\"{topic}\",\"data\":\"{}\"}}", payload(i));
        published.push(p.publish_json(&line));
    }
}

fn log_mentions_slow(server: &Server) -> bool {
    server
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.to_ascii_lowercase().contains("slow"))
}

fn healthz(server: &Server) {
    let mut c = Client::connect(server.addr);
    c.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, _, body) = c.read_response();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn pending_bytes_limit_disconnects_non_reader_and_spares_reader() {
    let server = Server::start_with(&[("streams", "max_pending_bytes = 65536")]);
    let (mut slow, early) = non_reading_subscriber(server.addr, "big");
    let reader = server.subscribe("topic=big");
    let received = Arc::new(Mutex::new(Vec::new()));
    let total = 300; // ~9.6 MiB: far more than the kernel buffers of the slow socket
    let handle = spawn_reader(reader, total, received.clone());
    let mut p = server.producer();
    let mut published = Vec::new();
    let t = Instant::now();
    publish_lockstep(&mut p, "big", 0..total, &received, &mut published);
    handle.join().expect("reader thread").expect("reader");
    eprintln!(
        "published {total} events of {PAYLOAD} bytes in {:?}",
        t.elapsed()
    );
    // The reading subscriber got every single event, in order.
    assert_eq!(*received.lock().unwrap(), published);

    // The slow one was cut off: reading it now ends in EOF (or a reset), long before the
    // default 30 s write timeout could have fired, and it did not get everything.
    let got = read_until_eof(&mut slow, early, Duration::from_secs(10))
        .expect("the non-reading subscriber was not disconnected (socket still open)");
    let ids = complete_event_ids(&got);
    assert!(
        ids.len() < total,
        "non-reading subscriber received all {total} events: not disconnected at the limit"
    );
    assert_eq!(
        ids,
        published[..ids.len()],
        "what the slow subscriber got is not a gap-free prefix"
    );
    eprintln!("slow subscriber got {} events before the cut", ids.len());

    // The server is still fine: health check and a new stream.
    healthz(&server);
    let mut fresh = server.subscribe("topic=big");
    let id = p.publish("big", "small");
    assert_eq!(fresh.read_event(), format!("id: {id}\ndata: small\n\n"));
}

#[test]
fn pending_bytes_limit_disconnect_is_logged() {
    // protocol 5: slow-client disconnects are summarised in the log.
    let server = Server::start_with(&[("streams", "max_pending_bytes = 65536")]);
    let (mut slow, early) = non_reading_subscriber(server.addr, "big");
    let mut p = server.producer();
    for i in 0..300 {
        let line = format!("{{\"topic\":\"big\",\"data\":\"{}\"}}", payload(i));
        p.publish_json(&line);
    }
    read_until_eof(&mut slow, early, Duration::from_secs(10))
        .expect("the non-reading subscriber was not disconnected");
    assert!(
        wait_for(Duration::from_secs(5), || log_mentions_slow(&server)),
        "no log line mentions the slow-client disconnect; log: {:?}",
        server.log.lock().unwrap()
    );
}

#[test]
fn write_timeout_disconnects_non_reader_and_spares_reader() {
    let server = Server::start_with(&[(
        "streams",
        "max_pending_bytes = 67108864\nwrite_timeout = \"1s\"",
    )]);
    let (mut slow, early) = non_reading_subscriber(server.addr, "big");
    let reader = server.subscribe("topic=big");
    let received = Arc::new(Mutex::new(Vec::new()));
    let first = 200; // ~6.4 MiB: more than the kernel buffers of the slow socket hold
    let more = 30;
    let handle = spawn_reader(reader, first + more, received.clone());
    let mut p = server.producer();
    let mut published = Vec::new();
    publish_lockstep(&mut p, "big", 0..first, &received, &mut published);
    let full_at = Instant::now();

    // Disconnected about write_timeout after its socket filled up; the log says so.
    let logged = wait_for(Duration::from_secs(6), || log_mentions_slow(&server));
    eprintln!(
        "log mentions the slow client after {:?}: {logged}",
        full_at.elapsed()
    );
    assert!(
        logged,
        "no slow-client disconnect logged within 6 s (write_timeout 1s); log: {:?}",
        server.log.lock().unwrap()
    );

    // The reader keeps receiving after the cut, and the server answers at once.
    publish_lockstep(
        &mut p,
        "big",
        first..first + more,
        &received,
        &mut published,
    );
    handle.join().expect("reader thread").expect("reader");
    assert_eq!(*received.lock().unwrap(), published);
    let t = Instant::now();
    healthz(&server);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "healthz took {:?}",
        t.elapsed()
    );

    // The slow socket ends (EOF/reset) once its buffered bytes are read, with a gap-free
    // prefix of the events and not all of them.
    let got = read_until_eof(&mut slow, early, Duration::from_secs(10))
        .expect("the non-reading subscriber was not disconnected (socket still open)");
    let ids = complete_event_ids(&got);
    assert!(ids.len() < first, "slow subscriber got all {first} events");
    assert_eq!(ids, published[..ids.len()]);
}

#[test]
fn write_timeout_spares_a_subscriber_that_reads_slowly_but_keeps_up() {
    // A stream whose output is always written within the timeout is never cut, however
    // long it lives: the timeout counts from when output became pending, not from the
    // stream start or the first stall.
    let server = Server::start_with(&[("streams", "write_timeout = \"1s\"")]);
    let mut c = server.subscribe("topic=s");
    let mut p = server.producer();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        let id = p.publish("s", &format!("e{i}"));
        assert_eq!(c.read_event(), format!("id: {id}\ndata: e{i}\n\n"));
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !log_mentions_slow(&server),
        "a keeping-up stream was treated as slow"
    );
}
