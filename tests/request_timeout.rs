//! protocol 2 (limits): a request not complete within `http.request_timeout` is closed
//! (slowloris), an idle keep-alive connection too; a stream is not subject to it; a client
//! that keeps sending after its stream's request head is closed.
mod common;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

const TIMEOUT: &str = "request_timeout = \"500ms\"";

fn server() -> Server {
    Server::start_with(&[("http", TIMEOUT)])
}

/// Waits for the server to close `c`; returns how long that took from `since`.
fn closed_after(c: &mut Client, since: Instant, limit: Duration) -> Duration {
    c.read_to_close(limit)
        .unwrap_or_else(|| panic!("connection still open after {limit:?}"));
    since.elapsed()
}

/// True if `c` is still open after `wait` (nothing but keepalives or nothing arrives, no EOF).
fn stays_open(c: &mut Client, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    c.sock
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut chunk = [0u8; 4096];
    let open = loop {
        if Instant::now() > deadline {
            break true;
        }
        match c.sock.read(&mut chunk) {
            Ok(0) => break false,
            Ok(n) => panic!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break false,
        }
    };
    c.set_timeout(Duration::from_secs(5));
    open
}

#[test]
fn half_a_request_head_is_closed_after_the_timeout() {
    let server = server();
    let mut c = Client::connect(server.addr);
    let t = Instant::now();
    c.send("GET /events?topic=a HTTP/1.1\r\nHo");
    let took = closed_after(&mut c, t, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(400) && took <= Duration::from_secs(2),
        "closed after {took:?} (request_timeout 500ms)"
    );
}

#[test]
fn silent_client_is_closed_after_the_timeout() {
    let server = server();
    let t = Instant::now();
    let mut c = Client::connect(server.addr);
    let took = closed_after(&mut c, t, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(400) && took <= Duration::from_secs(2),
        "closed after {took:?}"
    );
}

#[test]
fn trickling_head_is_closed_even_while_bytes_arrive() {
    // Slowloris: one byte every 50 ms never completes the head; arriving bytes must not
    // extend the deadline.
    let server = server();
    let mut c = Client::connect(server.addr);
    let t = Instant::now();
    let head = b"GET /events?topic=a HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    let mut closed = false;
    for i in 0.. {
        let byte = head.get(i).copied().unwrap_or(b'x');
        if c.sock.write_all(&[byte]).is_err() {
            closed = true;
            break;
        }
        if t.elapsed() > Duration::from_secs(4) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        // EOF shows up as a readable socket with 0 bytes.
        c.sock.set_nonblocking(true).unwrap();
        let mut b = [0u8; 256];
        let r = c.sock.read(&mut b);
        c.sock.set_nonblocking(false).unwrap();
        match r {
            Ok(0) => {
                closed = true;
                break;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(_) => {} // an answer (e.g. 408) is allowed; the close must follow
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let took = t.elapsed();
    assert!(closed, "trickling client still connected after {took:?}");
    assert!(took <= Duration::from_secs(2), "closed only after {took:?}");
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_timeout() {
    let server = server();
    let mut c = Client::connect(server.addr);
    c.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, _, _) = c.read_response();
    assert_eq!(status, 200);
    let t = Instant::now();
    let took = closed_after(&mut c, t, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(300) && took <= Duration::from_secs(2),
        "idle keep-alive closed after {took:?}"
    );
}

#[test]
fn keep_alive_connection_in_use_is_not_closed_early() {
    // Each request restarts the clock: a client that sends a request every 200 ms for
    // 1.5 s is served throughout.
    let server = server();
    let mut c = Client::connect(server.addr);
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        c.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        let (status, _, body) = c.read_response();
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn stream_is_not_closed_by_the_request_timeout() {
    let server = server();
    let mut c = server.subscribe("topic=long");
    assert!(
        stays_open(&mut c, Duration::from_millis(1500)),
        "stream closed within 1.5 s (request_timeout 500ms)"
    );
    let id = server.producer().publish("long", "still here");
    assert_eq!(c.read_event(), format!("id: {id}\ndata: still here\n\n"));
}

#[test]
fn client_sending_more_than_4k_after_stream_head_is_closed() {
    let server = server();
    let mut c = server.subscribe("topic=noisy");
    let chunk = [b'g'; 512];
    let t = Instant::now();
    let mut sent = 0;
    let mut closed = false;
    while t.elapsed() < Duration::from_secs(5) && sent < 256 * 1024 {
        if c.sock.write_all(&chunk).is_err() {
            closed = true;
            break;
        }
        sent += chunk.len();
        if sent > 4096 && sent % 2048 == 0 {
            c.sock.set_nonblocking(true).unwrap();
            let mut b = [0u8; 256];
            let r = c.sock.read(&mut b);
            c.sock.set_nonblocking(false).unwrap();
            match r {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Ok(n) => panic!("unexpected bytes {:?}", String::from_utf8_lossy(&b[..n])),
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if !closed {
        closed = c.read_to_close(Duration::from_secs(3)).is_some();
    }
    assert!(
        closed,
        "stream still open after the client sent {sent} bytes"
    );
}

#[test]
fn client_sending_a_little_after_stream_head_stays() {
    // Under 4 KiB after the head is read and discarded; the stream goes on.
    let server = server();
    let mut c = server.subscribe("topic=chatty");
    for _ in 0..6 {
        c.sock.write_all(&[b'z'; 500]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(stays_open(&mut c, Duration::from_millis(700)));
    let id = server.producer().publish("chatty", "ok");
    assert_eq!(c.read_event(), format!("id: {id}\ndata: ok\n\n"));
}

/// Sends a stream request head and `extra` bytes in one write; true if the server closes.
fn head_with_extra_bytes_is_closed(server: &Server, extra: usize) -> bool {
    let mut c = Client::connect(server.addr);
    let mut raw = b"GET /events?topic=burst HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    raw.extend_from_slice(&vec![b'g'; extra]);
    c.sock.write_all(&raw).unwrap();
    c.read_to_close(Duration::from_secs(4)).is_some()
}

#[test]
fn more_than_4k_sent_in_the_same_write_as_the_head_is_closed_6k() {
    // The same limit holds when the extra bytes arrive with the head (all within the
    // server's first read of the request).
    let server = server();
    assert!(
        head_with_extra_bytes_is_closed(&server, 6 * 1024),
        "stream still open after the client sent 6 KiB together with its request head"
    );
}

#[test]
fn more_than_4k_sent_in_the_same_write_as_the_head_is_closed_12k() {
    // More than the server reads at once together with the head.
    let server = server();
    assert!(
        head_with_extra_bytes_is_closed(&server, 12 * 1024),
        "stream still open after the client sent 12 KiB together with its request head"
    );
}
