//! Issue 14 part 1 (SPEC 2.3): the kernel's share of a stalled stream is bounded. A
//! subscriber that stops reading is cut off after about `max_pending_bytes + send_buffer`
//! bytes published to it, while the server's kernel send queue for it never grows past
//! `streams.send_buffer` (as the kernel accounts it: doubled); a reading subscriber on the
//! same topic gets every event. A peer that vanishes (no FIN, no ACK) is given up by the
//! kernel after `streams.write_timeout` (`TCP_USER_TIMEOUT`), an idle stream included
//! (its keepalive puts data in flight), and `/metrics` tells the two cuts apart.
mod common;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `data:` bytes per event (the reproduction).
const PAYLOAD: usize = 16_000;
const EVENTS: usize = 200;
const BATCH: usize = 10;
/// `streams.send_buffer` and `streams.max_pending_bytes` of the stalled-reader test. Not
/// smaller: a loopback segment is 64 KiB (MTU 65536), and a 32 KiB send_buffer (64 KiB
/// as the kernel counts it) holds just one, so the fast reader's delayed ACK (40 ms) paces
/// it to one segment per ACK (~1.6 MB/s) and the bursts of 160 KB overflow its queue.
const SEND_BUFFER: usize = 64 * 1024;
const MAX_PENDING: usize = 256 * 1024;
/// `SO_RCVBUF` of the stalled client (the kernel doubles it too).
const CLIENT_RCVBUF: usize = 4096;

fn payload(i: usize) -> String {
    let mut s = format!("{i:06}:");
    s.push_str(&"x".repeat(PAYLOAD - s.len()));
    s
}

/// A stream with a 4 KiB receive buffer (set before connect) that reads its head and
/// `retry:` line, then nothing more.
fn stalled_subscriber(addr: SocketAddr, topic: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(CLIENT_RCVBUF).expect("SO_RCVBUF");
    s.connect(&addr.into()).expect("connect");
    let mut sock: TcpStream = s.into();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(format!("GET /events?topic={topic} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    // Byte by byte, so that nothing past the `retry:` line is consumed.
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = sock.read(&mut byte).expect("read head");
        assert_eq!(n, 1, "EOF before the stream head");
        got.push(byte[0]);
        if let Some(h) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = &got[h + 4..];
            if body.ends_with(b"\n") {
                assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{got:?}");
                assert!(body.starts_with(b"retry: "), "{got:?}");
                break;
            }
        }
    }
    sock
}

/// The server side of a TCP connection as `ss -tnmi` shows it.
#[derive(Debug, Clone)]
struct SsSocket {
    state: String,
    send_q: u64,
    /// `skmem` `tb` (sk_sndbuf) and `w` (sk_wmem_queued).
    tb: u64,
    w: u64,
}

fn ss_available() -> bool {
    Command::new("ss")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The socket from `local` to `peer` (ports on 127.0.0.1), any state; None when gone.
fn ss_socket(local: u16, peer: u16) -> Option<SsSocket> {
    let out = Command::new("ss")
        .args(["-tnmiH", "state", "all"])
        .arg(format!("( sport = :{local} and dport = :{peer} )"))
        .output()
        .expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    let state = fields.next()?.to_string();
    let _recv_q = fields.next()?;
    let send_q = fields.next()?.parse().ok()?;
    let skmem = |key: &str| -> u64 {
        // An orphaned socket (closed by the server, data still queued) has no skmem.
        let Some(start) = text.find("skmem:(").map(|i| i + "skmem:(".len()) else {
            return 0;
        };
        let inner = &text[start..start + text[start..].find(')').unwrap()];
        inner
            .split(',')
            .find_map(|f| f.strip_prefix(key).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };
    Some(SsSocket {
        state,
        send_q,
        tb: skmem("tb"),
        w: skmem("w"),
    })
}

/// `ssehub_slow_disconnects_total{reason="..."}` from `/metrics` (raw text; the format
/// itself is checked by tests/ops_metrics.rs).
fn cuts(server: &Server, reason: &str) -> u64 {
    let mut c = Client::connect(server.addr);
    c.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, _, body) = c.read_response();
    assert_eq!(status, 200);
    let series = format!("ssehub_slow_disconnects_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{body}"))
        .parse()
        .unwrap()
}

/// Complete events (id, payload checked) at the start of `bytes`.
fn event_count(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    let blocks: Vec<&str> = text.split("\n\n").collect();
    let complete = &blocks[..blocks.len() - 1];
    for (i, block) in complete.iter().enumerate() {
        let data = block.lines().nth(1).unwrap_or_default();
        assert_eq!(data.get(6..12), Some(&format!("{i:06}")[..]), "event {i}");
        assert_eq!(data.len(), "data: ".len() + PAYLOAD, "event {i}");
    }
    complete.len()
}

#[test]
fn a_stalled_reader_is_cut_within_the_bound_and_the_kernel_holds_at_most_send_buffer() {
    let streams = format!("send_buffer = {SEND_BUFFER}\nmax_pending_bytes = {MAX_PENDING}");
    let server = Server::start_with(&[("streams", &streams)]);
    let mut stalled = stalled_subscriber(server.addr, "big");
    let client_port = stalled.local_addr().unwrap().port();
    let server_port = server.addr.port();

    // The fast subscriber reads everything in a thread of its own.
    let mut fast = server.subscribe("topic=big");
    let fast_ids = Arc::new(Mutex::new(Vec::new()));
    let ids = fast_ids.clone();
    let reader = std::thread::spawn(move || {
        fast.set_timeout(Duration::from_secs(10));
        for i in 0..EVENTS {
            let ev = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fast.read_event()))
                .map_err(|_| {
                format!("the fast reader got EOF or timed out after {i} events")
            })?;
            assert_eq!(event_data(&ev).get(..6), Some(&format!("{i:06}")[..]));
            ids.lock().unwrap().push(event_id(&ev).unwrap());
        }
        Ok::<(), String>(())
    });

    let use_ss = ss_available();
    if !use_ss {
        eprintln!("ss (iproute2) not found: the kernel send queue is not sampled");
    }
    let mut p = server.producer();
    let mut published = Vec::new();
    let mut frame_bytes = 0;
    // Events published while the stalled stream was still open (ESTAB on the server).
    let mut open_through = 0;
    let mut cut_seen = false;
    let mut samples = Vec::new();
    let start = Instant::now();
    for batch in 0..EVENTS / BATCH {
        let lines: Vec<String> = (batch * BATCH..(batch + 1) * BATCH)
            .map(|i| format!("{{\"topic\":\"big\",\"data\":\"{}\"}}\n", payload(i)))
            .collect();
        if !cut_seen && use_ss {
            // One at a time while the stalled stream is open, each followed by a look at
            // its kernel send queue.
            for line in &lines {
                let answer = p.request(line.trim_end());
                published.push(parse_ok(&answer).expect(&answer));
                if cut_seen {
                    continue;
                }
                match ss_socket(server_port, client_port) {
                    Some(s) if s.state == "ESTAB" => {
                        samples.push(s);
                        open_through += 1;
                    }
                    _ => cut_seen = true,
                }
            }
        } else {
            // The batches: ten lines in one write, then the ten answers.
            p.send_raw(lines.concat().as_bytes());
            for _ in 0..BATCH {
                let answer = p.read_answer();
                published.push(parse_ok(&answer).expect(&answer));
            }
        }
        frame_bytes = frame_bytes.max(
            format!(
                "id: {}\ndata: {}\n\n",
                published.last().unwrap(),
                payload(0)
            )
            .len(),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Err(e) = reader.join().expect("fast reader") {
        panic!(
            "{e}; cuts pending={} write_timeout={}; log:\n{}",
            cuts(&server, "pending"),
            cuts(&server, "write_timeout"),
            server.log_text()
        );
    }
    eprintln!("published {EVENTS} events in {:?}", start.elapsed());
    assert_eq!(
        *fast_ids.lock().unwrap(),
        published,
        "the fast reader lost events"
    );

    // The stalled one was cut: once it reads, it gets what the kernels held, then EOF
    // (the FIN queued behind it) or a reset.
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    loop {
        match stalled.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the stalled reader was not disconnected: {e}"),
        }
    }
    let delivered = event_count(&got);
    eprintln!(
        "stalled reader: {} bytes ({delivered} events) arrived before the close",
        got.len()
    );
    // What reached it is what the kernels held when it was cut: the server's send buffer
    // (2 x send_buffer as the kernel accounts it) and its own receive buffer (2 x 4 KiB).
    assert!(
        got.len() <= 2 * SEND_BUFFER + 2 * CLIENT_RCVBUF + frame_bytes,
        "{} bytes were in kernel buffers for a stalled stream (send_buffer {SEND_BUFFER})",
        got.len()
    );

    // Cut within the bound. Published to it before the cut: its pending output (at most
    // max_pending_bytes), what the kernels held (2 x send_buffer + the client's 8 KiB) and
    // the event that overflowed; one more event for the look at `ss` that comes after the
    // close of the turn that cut it. Slack beyond `max_pending + send_buffer`: the second
    // half of the kernel's doubling, the client's buffer and two frames (~70 KiB).
    if use_ss {
        assert!(
            cut_seen,
            "the stalled stream was still open after all events"
        );
        let open = open_through;
        let bound = MAX_PENDING + 2 * SEND_BUFFER + 2 * CLIENT_RCVBUF + 2 * frame_bytes;
        eprintln!(
            "stalled stream open through {open} events ({} bytes); bound {bound} bytes",
            open * frame_bytes
        );
        assert!(
            open * frame_bytes <= bound,
            "open after {open} events of {frame_bytes} bytes: past max_pending_bytes \
             {MAX_PENDING} + 2 x send_buffer {SEND_BUFFER} + slack"
        );
        // While open, the kernel's send queue stayed within the configured buffer.
        let tb = (2 * SEND_BUFFER) as u64;
        for s in &samples {
            assert_eq!(s.tb, tb, "sk_sndbuf is not 2 x send_buffer: {s:?}");
            assert!(s.send_q <= tb, "Send-Q past the send buffer: {s:?}");
        }
        let most = samples.iter().map(|s| s.send_q).max().unwrap_or(0);
        let w = samples.iter().map(|s| s.w).max().unwrap_or(0);
        eprintln!("largest Send-Q {most} bytes, wmem_queued {w} (tb {tb})");
        // The cut is a reset: the server's socket is gone at once, not lingering in
        // FIN-WAIT with up to 2 x send_buffer queued until TCP_USER_TIMEOUT.
        assert!(
            wait_for(Duration::from_secs(1), || ss_socket(
                server_port,
                client_port
            )
            .is_none()),
            "the cut stream's socket still holds kernel memory: {:?}",
            ss_socket(server_port, client_port)
        );
    }

    assert_eq!(cuts(&server, "pending"), 1);
    assert_eq!(cuts(&server, "write_timeout"), 0);
    assert_eq!(cuts(&server, "peer_timeout"), 0);
    assert!(
        wait_for(Duration::from_secs(3), || server.log_contains(
            "disconnected slow subscribers count=1 pending=1 write_timeout=0 peer_timeout=0"
        )),
        "{}",
        server.log_text()
    );
}

#[test]
fn send_buffer_is_set_on_public_and_admin_sockets_and_zero_leaves_the_kernel_default() {
    if !ss_available() {
        eprintln!("skipped: ss (iproute2) not found");
        return;
    }
    for (send_buffer, want) in [(0, None), (65536, Some(131072))] {
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin_addr = admin.local_addr().unwrap();
        drop(admin);
        let server = Server::start_with(&[
            ("http", &format!("admin_listen = \"{admin_addr}\"")),
            ("streams", &format!("send_buffer = {send_buffer}")),
        ]);
        let stream = server.subscribe("topic=a");
        let scrape = Client::connect(admin_addr);
        for (listener, client) in [(server.addr, &stream), (admin_addr, &scrape)] {
            let port = client.sock.local_addr().unwrap().port();
            let s = ss_socket(listener.port(), port).expect("server socket");
            match want {
                Some(tb) => assert_eq!(s.tb, tb, "{listener}: {s:?}"),
                // Autotuning from net.ipv4.tcp_wmem's default, not the configured default.
                None => assert_ne!(s.tb, 2 * 131072, "{listener}: {s:?}"),
            }
        }
    }
}

/// Runs `cmd` through `sh -c`; its stderr on failure.
fn sh(cmd: &str) -> Result<(), String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[test]
fn a_vanished_peer_is_given_up_after_write_timeout() {
    // In a network namespace of this thread's own (the hub started from it is in it too),
    // so that blackholing its loopback touches nothing else on the machine.
    std::thread::spawn(vanished_peer_in_own_namespace)
        .join()
        .expect("vanished-peer thread");
}

fn vanished_peer_in_own_namespace() {
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        eprintln!("skipped: no network namespace of our own ({e}); needs root, as in CI");
        return;
    }
    if let Err(e) = sh("ip link set lo up") {
        eprintln!("skipped: cannot bring up loopback in the namespace (iproute2 `ip`): {e}");
        return;
    }
    if !ss_available() {
        eprintln!("skipped: ss (iproute2) not found");
        return;
    }
    const KEEPALIVE_MS: u64 = 300;
    const WRITE_TIMEOUT_MS: u64 = 1000;
    let streams =
        format!("keepalive = \"{KEEPALIVE_MS}ms\"\nwrite_timeout = \"{WRITE_TIMEOUT_MS}ms\"");
    let server = Server::start_with(&[("streams", &streams)]);
    let mut c = server.subscribe("topic=quiet");
    assert_eq!(c.read_line(), ":\n", "a keepalive while the peer is there");
    let port = c.sock.local_addr().unwrap().port();

    // The peer vanishes: from now on every packet on loopback is dropped (a token bucket
    // of 10 bytes passes none; the kernel has no netem here). No FIN, no RST, no ACK.
    if let Err(e) = sh("tc qdisc add dev lo root tbf rate 8bit burst 10 limit 10") {
        eprintln!("skipped: the kernel cannot blackhole loopback with tbf: {e}");
        return;
    }
    let vanished = Instant::now();
    // The next keepalive is sent and never acknowledged; TCP_USER_TIMEOUT (write_timeout)
    // later the kernel gives up and the socket leaves the table.
    let gone = wait_for(Duration::from_secs(20), || {
        ss_socket(server.addr.port(), port).is_none_or(|s| s.state != "ESTAB")
    });
    let lingered = vanished.elapsed();
    sh("tc qdisc del dev lo root").expect("remove the blackhole");
    assert!(gone, "the vanished peer's stream is still open after 20 s");
    eprintln!(
        "vanished peer given up after {lingered:?} (keepalive {KEEPALIVE_MS} ms, \
         write_timeout {WRITE_TIMEOUT_MS} ms)"
    );
    // At most a keepalive interval until data is in flight, then the user timeout; the
    // retransmission timer fires at the timeout (the kernel clamps it), plus scheduling.
    let bound = Duration::from_millis(KEEPALIVE_MS + WRITE_TIMEOUT_MS + 1000);
    assert!(lingered <= bound, "lingered {lingered:?}, bound {bound:?}");
    assert!(
        lingered >= Duration::from_millis(WRITE_TIMEOUT_MS * 9 / 10),
        "given up after {lingered:?}, before write_timeout"
    );
    assert!(
        wait_for(Duration::from_secs(3), || cuts(&server, "peer_timeout")
            == 1),
        "peer_timeout not counted; log:\n{}",
        server.log_text()
    );
    assert_eq!(cuts(&server, "pending"), 0);
    assert_eq!(cuts(&server, "write_timeout"), 0);
    let why = server
        .log_lines()
        .into_iter()
        .find(|l| l.contains("stopped acknowledging"));
    eprintln!("{}", why.unwrap_or_default());
}
