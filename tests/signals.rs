//! Graceful stop (protocol 1, 2.3, 5): SIGTERM and SIGINT stop accepting, send each
//! stream a fresh jittered `retry:`, close it, remove the socket file and exit 0. The ingest
//! socket of a running server is never stolen; a stale one is replaced. SIGHUP reloads the
//! configuration and keeps the hub running (protocol 3.3).
mod common;
use common::*;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// Small values so the shutdown `retry:` range is easy to check: [1000, 3000] ms.
const STREAMS: &[(&str, &str)] = &[
    ("streams", "retry_base = \"1s\""),
    ("streams", "retry_jitter = \"0s\""),
    ("streams", "shutdown_spread = \"2s\""),
    ("streams", "drain_timeout = \"3s\""),
];

/// The stream gets exactly one fresh `retry: N` line, then the server closes it.
fn assert_retry_then_close(client: &mut Client, which: usize) {
    let rest = client
        .read_to_close(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("stream {which}: not closed within 10 s after the signal"));
    let text = String::from_utf8(rest).expect("utf-8");
    let n: u64 = text
        .strip_prefix("retry: ")
        .and_then(|r| r.strip_suffix('\n'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "stream {which}: expected exactly one `retry: N` line before close, got {text:?}"
            )
        });
    assert!(
        (1000..=3000).contains(&n),
        "stream {which}: retry {n} outside retry_base..retry_base+shutdown_spread (1000..=3000)"
    );
}

fn graceful_stop(signal: &str, streams: usize) {
    let mut server = Server::start_with(STREAMS);
    let socket = server.socket.clone();
    assert!(socket.exists());
    let mut clients: Vec<Client> = (0..streams)
        .map(|i| server.subscribe(&format!("topic=s{i}&topic=all")))
        .collect();
    let mut producer = server.producer();
    let id = producer.publish("all", "before");
    for c in &mut clients {
        assert_eq!(c.read_event(), format!("id: {id}\ndata: before\n\n"));
    }
    server.signal(signal);
    for (i, c) in clients.iter_mut().enumerate() {
        assert_retry_then_close(c, i);
    }
    drop(clients);
    let code = server.wait_exit(Duration::from_secs(10));
    assert_eq!(
        code,
        Some(0),
        "SIG{signal}: exit code (None: still running or killed)"
    );
    assert!(!socket.exists(), "SIG{signal}: socket file left behind");
    // The connected producer was closed too (EOF, not a hang).
    let mut buf = [0u8; 16];
    match std::io::Read::read(&mut producer.sock, &mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "producer got unexpected bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("producer not closed: {e}"),
    }
}

#[test]
fn sigterm_sends_retry_closes_streams_removes_socket_exits_zero() {
    graceful_stop("TERM", 3);
}

#[test]
fn sigint_is_a_graceful_stop() {
    graceful_stop("INT", 1);
}

/// SIGHUP reloads the configuration, as `ssehub reload` does: the answer is logged, a
/// reloadable key takes effect, streams stay open, the hub keeps running; a broken file
/// changes nothing and is logged.
#[test]
fn sighup_reloads_the_configuration_and_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "[streams]\nkeepalive = \"10s\"\n");
    let mut server = Server::start_config(&config, |_| {});
    let mut stream = server.subscribe("topic=hup");
    write_config(dir.path(), "", "[streams]\nkeepalive = \"200ms\"\n");
    server.signal("HUP");
    assert!(
        wait_for(Duration::from_secs(5), || server.log_contains(
            r#"reload (SIGHUP): {"ok":true,"changed":["streams.keepalive"],"needs_restart":[]}"#
        )),
        "{}",
        server.log_text()
    );
    // The shorter keepalive reaches the open stream: it was not closed.
    let keepalive = stream.read_for(Duration::from_millis(900));
    assert!(
        String::from_utf8_lossy(&keepalive).matches(":\n").count() >= 2,
        "{keepalive:?}"
    );
    // A broken file: logged, nothing changes, still running.
    std::fs::write(&config, "[streams\n").unwrap();
    server.signal("HUP");
    assert!(wait_for(Duration::from_secs(5), || server
        .log_contains("reload (SIGHUP): reload failed: ")));
    let id = server.producer().publish("hup", "still here");
    let rest = String::from_utf8(stream.read_until(b"data: still here\n\n")).unwrap();
    assert!(rest.contains(&format!("id: {id}\n")), "{rest}");
    assert_eq!(
        server.wait_exit(Duration::from_millis(300)),
        None,
        "still running"
    );
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
}

/// Without a configuration file there is nothing to reload: SIGHUP says so and the hub
/// keeps running (it used to stop, and `Restart=on-failure` did not bring it back).
#[test]
fn sighup_without_a_config_file_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ingest.sock");
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--socket"])
        .arg(&socket)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let wait_line = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    };
    assert!(wait_line("listening http="));
    let pid = child.id().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    assert!(wait_line(
        "reload (SIGHUP): cannot reload: started without --config"
    ));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after SIGHUP"
    );
    let mut p = Producer::connect(&socket);
    assert!(p.publish("t", "x") > 0);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn socket_goes_and_producers_are_refused_during_the_drain() {
    let mut server = Server::start_with(&[
        ("streams", "retry_base = \"1s\""),
        ("streams", "shutdown_spread = \"2s\""),
        ("streams", "drain_timeout = \"5s\""),
    ]);
    // A stream whose client neither reads nor closes keeps the drain going for a while...
    let mut lazy = server.subscribe("topic=x");
    let socket = server.socket.clone();
    server.signal("TERM");
    // ...but the socket file goes at once, and new producers are refused.
    assert!(
        wait_for(Duration::from_secs(3), || !socket.exists()),
        "socket file still there during the drain"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_err(),
        "a producer could connect during the drain"
    );
    assert_retry_then_close(&mut lazy, 0);
    drop(lazy);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn drain_is_bounded_when_clients_never_close() {
    let mut server = Server::start_with(&[
        ("streams", "retry_base = \"1s\""),
        ("streams", "shutdown_spread = \"2s\""),
        ("streams", "drain_timeout = \"1s\""),
    ]);
    // Streams whose clients never read again and never close their side.
    let idle: Vec<Client> = (0..3).map(|_| server.subscribe("topic=idle")).collect();
    let mut producer = server.producer();
    producer.publish("idle", "unread");
    server.signal("TERM");
    let code = server.wait_exit(Duration::from_secs(8));
    assert_eq!(
        code,
        Some(0),
        "not exited 0 within 8 s with drain_timeout = 1s (None: still running)"
    );
    assert!(!server.socket.exists(), "socket file left behind");
    drop(idle);
}

#[test]
fn second_server_on_the_same_socket_fails_and_steals_nothing() {
    let first = Server::start();
    let inode = std::fs::metadata(&first.socket).expect("socket").ino();
    let mut sub = first.subscribe("topic=mine");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("second.toml");
    std::fs::write(&config, config_with_socket(&first.socket, &[])).unwrap();
    let out = run_bin(
        &["serve", "--config", config.to_str().unwrap()],
        b"",
        Duration::from_secs(10),
    );
    assert!(
        !out.timed_out,
        "the second server kept running on a socket in use: {out:?}"
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.code.is_some(),
        "second server died by a signal: {out:?}"
    );
    assert!(
        out.stderr.contains(first.socket.to_str().unwrap()) || out.stderr.contains("in use"),
        "the failure does not say why: {:?}",
        out.stderr
    );

    let meta = std::fs::metadata(&first.socket).expect("first server's socket file removed");
    assert_eq!(meta.ino(), inode, "the socket file was replaced");
    let mut p = first.producer();
    let id = p.publish("mine", "still mine");
    assert_eq!(sub.read_event(), format!("id: {id}\ndata: still mine\n\n"));
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists(), "the stale socket file stays after drop");
    let server = Server::start_at_socket(&socket, &[]);
    let mut sub = server.subscribe("topic=fresh");
    let mut p = server.producer();
    let id = p.publish("fresh", "hello");
    assert_eq!(sub.read_event(), format!("id: {id}\ndata: hello\n\n"));
}

#[test]
fn a_regular_file_at_the_socket_path_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, "precious data\n").unwrap();
    let config = dir.path().join("ssehub.toml");
    std::fs::write(&config, config_with_socket(&path, &[])).unwrap();
    let mut run = spawn_bin(&["serve", "--config", config.to_str().unwrap()], b"");
    // Wait until the server gives up, or the file is touched.
    let intact = || std::fs::read_to_string(&path).is_ok_and(|c| c == "precious data\n");
    let gave_up = wait_for(Duration::from_secs(5), || {
        run.child.try_wait().ok().flatten().is_some() || !intact()
    }) && intact();
    let content = std::fs::read_to_string(&path).ok();
    let out = run.finish(Duration::from_secs(1));
    assert_eq!(
        content.as_deref(),
        Some("precious data\n"),
        "the server deleted or replaced a regular file at its socket path (gave up: {gave_up}, {out:?})"
    );
    assert!(gave_up, "expected the server to refuse to start: {out:?}");
    assert_ne!(out.code, Some(0), "{out:?}");
}

/// `/readyz` while draining: a subscriber that reads nothing keeps the drain going (its
/// `retry:` cannot be written), and meanwhile the admin listener, still open, answers
/// `503 not ready: draining (shutting down)`; `/healthz` stays `200`.
#[test]
fn readyz_says_draining_while_the_drain_lasts() {
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let admin_line = format!("admin_listen = \"127.0.0.1:{admin}\"");
    let mut s = Server::start_with(&[
        ("http", &admin_line),
        ("streams", "drain_timeout = \"20s\""),
        ("streams", "max_pending_bytes = 67108864"),
        ("streams", "send_buffer = 4096"),
    ]);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let ask = |path: &str| {
        let mut c = Client::connect(admin);
        c.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ));
        let (status, _, body) = c.read_response();
        (status, body)
    };
    assert_eq!(ask("/readyz"), (200, "ready\n".to_string()));
    // A stream that never reads, with more queued than the sockets hold.
    let stalled = s.subscribe("topic=full");
    stalled.sock.set_nonblocking(false).unwrap();
    let mut p = s.producer();
    let big = "x".repeat(60_000);
    for _ in 0..100 {
        p.publish("full", &big);
    }
    s.signal("TERM");
    assert!(wait_for(Duration::from_secs(3), || ask("/readyz").0 == 503));
    assert_eq!(
        ask("/readyz"),
        (503, "not ready: draining (shutting down)\n".to_string())
    );
    assert_eq!(ask("/healthz").0, 200, "alive while draining");
    // Publishes are refused: nothing published now could reach a stream before the exit.
    let mut c = Client::connect(admin);
    c.send("POST /publish HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    let (status, head, body) = c.read_response();
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("Connection: close"), "{head}");
    // Once the stalled stream goes, the drain ends although the admin listener is open.
    let started = std::time::Instant::now();
    drop(stalled);
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// `log.format = "json"` over the real binary, switched on by a SIGHUP reload: every line
/// after it is one JSON object with `ts`, `level`, `msg` and the line's fields.
#[test]
fn json_log_lines_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let mut server = Server::start_config(&config, |_| {});
    write_config(dir.path(), "", "[log]\nformat = \"json\"\n");
    server.signal("HUP");
    assert!(wait_for(Duration::from_secs(5), || server.log_contains(
        r#"reload (SIGHUP): {"ok":true,"changed":["log.format"]"#
    )));
    let _stream = server.subscribe("topic=j");
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    let lines = server.log_lines();
    let at = lines
        .iter()
        .position(|l| l.contains("reload (SIGHUP)"))
        .unwrap();
    let after: Vec<serde_json::Value> = lines[at + 1..]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(!after.is_empty());
    for v in &after {
        let ts = v["ts"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{ts}");
        assert!(v["level"].is_string() && v["msg"].is_string(), "{v}");
    }
    let stopping = after
        .iter()
        .find(|v| v["msg"] == "stopping: draining")
        .unwrap_or_else(|| panic!("{after:?}"));
    assert_eq!(stopping["level"], "info");
    assert_eq!(stopping["streams"], "1");
    assert!(
        stopping["timeout_ms"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
}
