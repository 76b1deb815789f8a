//! Reload without restart (protocol 3.3, 5): `{"admin":"reload"}` on the ingest socket (and
//! `ssehub reload`, the unit's ExecReload) re-reads the config file, answers which keys
//! changed and which need a restart, and applies the reloadable ones while streams stay
//! open — except streams that changed auth or CORS settings no longer allow, which get a
//! `retry:` and are closed. A broken file changes nothing. SIGHUP does the same reload
//! (tests/signals.rs).
mod common;

use common::*;
use std::time::{Duration, Instant};

fn reload_answer(socket: &std::path::Path) -> (Option<i32>, String) {
    let out = run_bin(
        &["reload", "--socket", socket.to_str().unwrap()],
        b"",
        Duration::from_secs(10),
    );
    (out.code, format!("{}{}", out.stdout, out.stderr))
}

#[test]
fn reload_changes_limits_while_streams_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ingest.sock");
    let config = write_config(
        dir.path(),
        "max_header_bytes = 8192",
        "[streams]\nkeepalive = \"60s\"\n",
    );
    let mut hub = Server::start_config(&config, |_| {});
    let mut open = Client::connect(hub.addr);
    open.send("GET /events?topic=kept HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(open.read_head().starts_with("HTTP/1.1 200 OK"));
    assert!(open.read_line().starts_with("retry: "));

    // A 3 KB header is fine under 8192.
    let big = format!("X-Pad: {}\r\n", "p".repeat(3000));
    let mut c = Client::connect(hub.addr);
    c.send(&format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{big}\r\n"));
    assert_eq!(c.read_response().0, 200);

    // New limits, and a key that needs a restart.
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:1\"\nmax_header_bytes = 1024\n\
             [ingest]\nsocket = {:?}\n[streams]\nkeepalive = \"300ms\"\n",
            socket.display().to_string()
        ),
    )
    .unwrap();
    let (code, answer) = reload_answer(&socket);
    assert_eq!(code, Some(0), "{answer}");
    let v: serde_json::Value = serde_json::from_str(answer.trim()).expect("JSON answer");
    assert_eq!(v["ok"], true);
    let names = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("changed"),
        ["http.max_header_bytes", "streams.keepalive"]
    );
    assert_eq!(names("needs_restart"), ["http.listen"]);

    // The open stream is still there and gets the new, shorter keepalive at once (not
    // after the old 60 s).
    let started = Instant::now();
    assert_eq!(open.read_line(), ":\n");
    assert!(started.elapsed() < Duration::from_secs(2));
    let started = Instant::now();
    assert_eq!(open.read_line(), ":\n");
    let gap = started.elapsed();
    assert!(
        gap > Duration::from_millis(200) && gap < Duration::from_millis(1500),
        "keepalive every 300 ms now, got {gap:?}"
    );
    // Events still flow to it.
    let id = Producer::connect(&socket).publish("kept", "still here");
    let mut event = open.read_event();
    while event.starts_with(":\n") {
        event = event[2..].to_string() + &open.read_event();
    }
    assert_eq!(event, format!("id: {id}\ndata: still here\n\n"));

    // The new header limit applies to new requests: 3 KB is now 431.
    let mut c = Client::connect(hub.addr);
    c.send(&format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{big}\r\n"));
    assert_eq!(c.read_response().0, 431);

    // http.listen needs a restart: the hub still listens where it did.
    let mut c = Client::connect(hub.addr);
    c.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().0, 200);
    assert!(wait_for(Duration::from_secs(2), || {
        hub.log_contains(
            "config reloaded changed=[\"http.max_header_bytes\", \"streams.keepalive\"]",
        )
    }));
    assert!(hub.log_contains("need a restart"));

    hub.signal("TERM");
    assert_eq!(hub.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn a_broken_file_changes_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ingest.sock");
    let config = write_config(dir.path(), "", "[streams]\nkeepalive = \"60s\"\n");
    let hub = Server::start_config(&config, |_| {});
    std::fs::write(&config, "[streams]\nkeepalve = \"1s\"\n").unwrap();
    let (code, answer) = reload_answer(&socket);
    assert_ne!(code, Some(0));
    let reason = parse_error_answer(answer.trim()).unwrap_or_else(|| panic!("{answer}"));
    assert!(
        reason.contains("reload failed") && reason.contains("keepalve"),
        "{reason}"
    );
    // Still serving with the old configuration.
    let mut c = Client::connect(hub.addr);
    c.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().0, 200);
    // `ssehub reload --config` on a file the hub refuses: the command still finds the
    // socket in it and prints the hub's answer, not a parse error of its own.
    write_config(dir.path(), "", "[streams]\nkeepalive = 60 s\n");
    let out = run_bin(
        &["reload", "--config", config.to_str().unwrap()],
        b"",
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let reason = parse_error_answer(out.stdout.trim()).unwrap_or_else(|| panic!("{out:?}"));
    assert!(reason.starts_with("reload failed: "), "{reason}");
    // `ssehub publish --config` finds the socket the same way.
    let mut sub = hub.subscribe("topic=cfg");
    let out = run_bin(
        &[
            "publish",
            "--config",
            config.to_str().unwrap(),
            "--topic",
            "cfg",
            "via-config",
        ],
        b"",
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(sub.read_event().contains("data: via-config\n"));
}

#[test]
fn reload_answers_in_order_between_pipelined_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let hub = Server::start_config(&config, |_| {});
    let _ = &hub;
    let mut p = Producer::connect(&dir.path().join("ingest.sock"));
    p.send_raw(
        b"{\"topic\":\"a\",\"data\":1}\n{\"admin\":\"reload\"}\n{\"topic\":\"a\",\"data\":2}\n",
    );
    assert!(parse_ok(&p.read_answer()).is_some());
    assert_eq!(
        p.read_answer(),
        r#"{"ok":true,"changed":[],"needs_restart":[]}"#
    );
    assert!(parse_ok(&p.read_answer()).is_some());
}

#[test]
fn without_a_config_file_reload_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ingest.sock");
    let mut run = spawn_bin(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--socket",
            socket.to_str().unwrap(),
        ],
        b"",
    );
    assert!(wait_for(Duration::from_secs(5), || socket.exists()));
    let (code, answer) = reload_answer(&socket);
    assert_ne!(code, Some(0));
    assert!(answer.contains("started without --config"), "{answer}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGTERM) };
    let _ = run.child.wait();
}

#[test]
fn reload_applies_auth_and_cors_to_new_requests() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ingest.sock");
    let config = write_config(dir.path(), "", "");
    let hub = Server::start_config(&config, |_| {});
    let status = |query: &str, headers: &str| {
        let mut c = Client::connect(hub.addr);
        c.send(&format!(
            "GET /events?{query} HTTP/1.1\r\nHost: t\r\n{headers}\r\n"
        ));
        let head = c.read_head();
        head.split(' ').nth(1).unwrap().parse::<u16>().unwrap()
    };
    assert_eq!(
        status("topic=secret:1", "Origin: https://evil.example\r\n"),
        200
    );
    // An anonymous stream opened before the reload on a topic that becomes private.
    let mut before = Client::connect(hub.addr);
    before.send("GET /events?topic=secret:2 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(before.read_head().starts_with("HTTP/1.1 200"));
    before.read_line();

    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "[auth]\nsecret = \"s3cret\"\nprivate = [\"secret:*\"]\n\
         [cors]\nallowed_origins = [\"https://app.example\"]\n",
    );
    std::fs::write(&config, text).unwrap();
    let (code, answer) = reload_answer(&socket);
    assert_eq!(code, Some(0), "{answer}");
    assert_eq!(
        answer.trim(),
        r#"{"ok":true,"changed":["auth.secret","auth.private","cors.allowed_origins"],"needs_restart":[]}"#
    );
    assert_eq!(
        status("topic=secret:1", ""),
        401,
        "private after the reload"
    );
    assert_eq!(
        status("topic=public", "Origin: https://evil.example\r\n"),
        403
    );
    assert_eq!(
        status("topic=public", "Origin: https://app.example\r\n"),
        200
    );
    let token = run_bin(
        &[
            "token",
            "--secret",
            "s3cret",
            "--subscribe",
            "secret:*",
            "--ttl",
            "1h",
        ],
        b"",
        Duration::from_secs(10),
    );
    let bearer = format!("Authorization: Bearer {}\r\n", token.stdout.trim());
    assert_eq!(status("topic=secret:1", &bearer), 200);
    // It no longer gets events: it is told to come back (with a token), then closed.
    Producer::connect(&socket).publish("secret:2", "not for anonymous readers");
    assert_ended_with_retry(&mut before, 3000..=5000);

    // A private pattern without any key is refused and nothing changes.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace("secret = \"s3cret\"\n", "");
    std::fs::write(&config, text).unwrap();
    let (code, answer) = reload_answer(&socket);
    assert_ne!(code, Some(0), "{answer}");
    assert_eq!(
        status("topic=secret:1", &bearer),
        200,
        "old keys still in force"
    );
}

/// The subject CN of the certificate the hub presents now.
fn presented_cn(addr: std::net::SocketAddr) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .expect("openssl s_client");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn renewed_certificate_files_are_taken_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ingest.sock");
    common::certs::self_signed(dir.path(), "first");
    let tls = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        dir.path().join("cert.pem").display().to_string(),
        dir.path().join("key.pem").display().to_string()
    );
    let config = write_config(dir.path(), "", &tls);
    let hub = Server::start_config(&config, |_| {});
    assert!(
        presented_cn(hub.addr).contains("CN = first"),
        "{}",
        presented_cn(hub.addr)
    );

    // Nothing changed on disk: nothing to report.
    let (code, answer) = reload_answer(&socket);
    assert_eq!(code, Some(0), "{answer}");
    assert_eq!(
        answer.trim(),
        r#"{"ok":true,"changed":[],"needs_restart":[]}"#
    );

    // Renewed in place (same paths, as certbot does): new handshakes get the new one.
    common::certs::self_signed(dir.path(), "second");
    let (code, answer) = reload_answer(&socket);
    assert_eq!(code, Some(0), "{answer}");
    assert_eq!(
        answer.trim(),
        r#"{"ok":true,"changed":["tls.cert","tls.key"],"needs_restart":[]}"#
    );
    assert!(
        presented_cn(hub.addr).contains("CN = second"),
        "{}",
        presented_cn(hub.addr)
    );

    // A broken certificate file is refused and the one in force stays.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate\n").unwrap();
    let (code, answer) = reload_answer(&socket);
    assert_ne!(code, Some(0), "{answer}");
    assert!(answer.contains("reload failed"), "{answer}");
    assert!(presented_cn(hub.addr).contains("CN = second"));
}

/// The hub's answer status to a request for `/events?QUERY` with extra header lines.
fn stream_status(addr: std::net::SocketAddr, query: &str, headers: &str) -> u16 {
    let mut c = Client::connect(addr);
    c.send(&format!(
        "GET /events?{query} HTTP/1.1\r\nHost: t\r\n{headers}\r\n"
    ));
    let head = c.read_head();
    head.split(' ').nth(1).unwrap().parse::<u16>().unwrap()
}

/// Opens a stream (asserting `200` and the `retry:` line) with extra header lines.
fn open_stream(addr: std::net::SocketAddr, query: &str, headers: &str) -> Client {
    let mut c = Client::connect(addr);
    c.send(&format!(
        "GET /events?{query} HTTP/1.1\r\nHost: t\r\n{headers}\r\n"
    ));
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(c.read_line().starts_with("retry: "));
    c
}

/// An HS256 token from `ssehub token` for `pattern`, valid for an hour.
fn mint(secret: &str, pattern: &str) -> String {
    let out = run_bin(
        &[
            "token",
            "--secret",
            secret,
            "--subscribe",
            pattern,
            "--ttl",
            "1h",
        ],
        b"",
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.stdout.trim().to_string()
}

/// The stream ends within a few seconds, and all it got after its head is one `retry:`
/// within `range` (keepalives aside): no event, and a fresh reconnection delay.
fn assert_ended_with_retry(c: &mut Client, range: std::ops::RangeInclusive<u64>) {
    let rest = c
        .read_to_close(Duration::from_secs(5))
        .expect("the stream was not closed within 5 s");
    let text = String::from_utf8_lossy(&rest);
    let lines: Vec<&str> = text.lines().filter(|l| *l != ":").collect();
    assert_eq!(lines.len(), 1, "expected only a retry: line, got {text:?}");
    let ms: u64 = lines[0]
        .strip_prefix("retry: ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("expected a retry: line, got {text:?}"));
    assert!(range.contains(&ms), "retry {ms} not in {range:?}");
}

/// Reads the next event, passing over keepalives.
fn next_event(c: &mut Client) -> String {
    let mut event = c.read_event();
    while let Some(rest) = event.strip_prefix(":\n") {
        event = rest.to_string() + &c.read_event();
    }
    event
}

fn reload_ok(socket: &std::path::Path) -> String {
    let (code, answer) = reload_answer(socket);
    assert_eq!(code, Some(0), "{answer}");
    answer.trim().to_string()
}

const RETRY: &str = "[streams]\nretry_base = \"2s\"\nretry_jitter = \"1s\"\n";

/// Issue 16, part 4: a key leaked, so the secret is rotated and a topic made private. The
/// streams opened before with the old key, or anonymously on the topic now private, are
/// ended (with a `retry:`, so a client with a fresh token comes back) instead of reading
/// on while new connections with the same credentials are refused.
#[test]
fn rotating_the_key_and_adding_a_private_topic_ends_the_streams_it_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ingest.sock");
    let auth = |secret: &str, private: &str| {
        format!("{RETRY}[auth]\nsecret = \"{secret}\"\nprivate = [{private}]\n")
    };
    let config = write_config(dir.path(), "", &auth("old-key", "\"priv:*\""));
    let hub = Server::start_config(&config, |_| {});
    let old_token = format!("Authorization: Bearer {}\r\n", mint("old-key", "priv:*"));
    let mut anonymous = open_stream(hub.addr, "topic=later:1", "");
    let mut with_token = open_stream(hub.addr, "topic=priv:a", &old_token);
    let mut public = open_stream(hub.addr, "topic=news", "");

    write_config(dir.path(), "", &auth("new-key", "\"priv:*\", \"later:*\""));
    assert_eq!(
        reload_ok(&socket),
        r#"{"ok":true,"changed":["auth.secret","auth.private"],"needs_restart":[]}"#
    );
    // Published after the reload was answered: the revoked streams must not get these.
    let mut producer = Producer::connect(&socket);
    producer.publish("later:1", "revoked");
    producer.publish("priv:a", "revoked");
    let id = producer.publish("news", "still public");

    assert_ended_with_retry(&mut anonymous, 2000..=3000);
    assert_ended_with_retry(&mut with_token, 2000..=3000);
    assert_eq!(
        next_event(&mut public),
        format!("id: {id}\ndata: still public\n\n")
    );
    assert_eq!(stream_status(hub.addr, "topic=later:1", ""), 401);
    assert_eq!(stream_status(hub.addr, "topic=priv:a", &old_token), 401);
    let new_token = format!("Authorization: Bearer {}\r\n", mint("new-key", "*"));
    let mut back = open_stream(hub.addr, "topic=later:1&topic=priv:a", &new_token);
    let id = producer.publish("later:1", "with a fresh token");
    assert_eq!(
        next_event(&mut back),
        format!("id: {id}\ndata: with a fresh token\n\n")
    );
    assert!(wait_for(Duration::from_secs(2), || hub.log_contains(
        "reload ended streams no longer allowed: origin_refused=0 token_key_changed=1 \
         topic_now_private=1 token_expired=0"
    )));
}

/// A token stream on a topic that was already private stays open when a reload only adds
/// an unrelated private pattern (the key is unchanged; its token was checked for it),
/// while an anonymous stream on the newly private topic is ended by the same reload.
#[test]
fn a_token_stream_on_an_already_private_topic_survives_an_unrelated_private_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ingest.sock");
    let auth = |private: &str| format!("{RETRY}[auth]\nsecret = \"k\"\nprivate = [{private}]\n");
    let config = write_config(dir.path(), "", &auth("\"priv:*\""));
    let hub = Server::start_config(&config, |_| {});
    let token = format!("Authorization: Bearer {}\r\n", mint("k", "priv:*"));
    let mut kept = open_stream(hub.addr, "topic=priv:a&topic=news", &token);
    let mut anonymous = open_stream(hub.addr, "topic=other:1", "");

    write_config(dir.path(), "", &auth("\"priv:*\", \"other:*\""));
    assert_eq!(
        reload_ok(&socket),
        r#"{"ok":true,"changed":["auth.private"],"needs_restart":[]}"#
    );
    assert_ended_with_retry(&mut anonymous, 2000..=3000);
    let mut producer = Producer::connect(&socket);
    let first = producer.publish("priv:a", "private, still yours");
    let second = producer.publish("news", "public");
    assert_eq!(
        next_event(&mut kept),
        format!("id: {first}\ndata: private, still yours\n\n")
    );
    assert_eq!(
        next_event(&mut kept),
        format!("id: {second}\ndata: public\n\n")
    );
}

/// An `Origin` stream is ended when a reload takes its origin off
/// `cors.allowed_origins`; one whose origin is still allowed (written with a trailing
/// slash in the file) and one without `Origin` stay.
#[test]
fn a_stream_whose_origin_is_no_longer_allowed_is_ended() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ingest.sock");
    let cors = |origins: &str| format!("{RETRY}[cors]\nallowed_origins = [{origins}]\n");
    let config = write_config(
        dir.path(),
        "",
        &cors("\"https://a.example\", \"https://b.example\""),
    );
    let hub = Server::start_config(&config, |_| {});
    let mut a = open_stream(hub.addr, "topic=news", "Origin: https://a.example\r\n");
    let mut b = open_stream(hub.addr, "topic=news", "Origin: https://b.example\r\n");
    let mut plain = open_stream(hub.addr, "topic=news", "");

    write_config(dir.path(), "", &cors("\"https://a.example/\""));
    assert_eq!(
        reload_ok(&socket),
        r#"{"ok":true,"changed":["cors.allowed_origins"],"needs_restart":[]}"#
    );
    let id = Producer::connect(&socket).publish("news", "after");
    assert_ended_with_retry(&mut b, 2000..=3000);
    for c in [&mut a, &mut plain] {
        assert_eq!(next_event(c), format!("id: {id}\ndata: after\n\n"));
    }
    assert_eq!(
        stream_status(hub.addr, "topic=news", "Origin: https://b.example\r\n"),
        403
    );
    assert!(wait_for(Duration::from_secs(2), || hub.log_contains(
        "reload ended streams no longer allowed: origin_refused=1 token_key_changed=0 \
         topic_now_private=0 token_expired=0"
    )));
}

/// Two reloads read in one turn (pipelined): the second finds nothing new, but the first
/// one's key rotation is still applied and still ends the streams of the old key.
#[test]
fn a_second_reload_in_the_same_turn_keeps_the_first_ones_changes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ingest.sock");
    let auth = |secret: &str| format!("{RETRY}[auth]\nsecret = \"{secret}\"\nprivate = [\"p\"]\n");
    let config = write_config(dir.path(), "", &auth("old-key"));
    let hub = Server::start_config(&config, |_| {});
    let old_token = format!("Authorization: Bearer {}\r\n", mint("old-key", "p"));
    let mut with_token = open_stream(hub.addr, "topic=p", &old_token);

    write_config(dir.path(), "", &auth("new-key"));
    let mut p = Producer::connect(&socket);
    p.send_raw(b"{\"admin\":\"reload\"}\n{\"admin\":\"reload\"}\n");
    assert_eq!(
        p.read_answer(),
        r#"{"ok":true,"changed":["auth.secret"],"needs_restart":[]}"#
    );
    assert_eq!(
        p.read_answer(),
        r#"{"ok":true,"changed":[],"needs_restart":[]}"#
    );
    assert_ended_with_retry(&mut with_token, 2000..=3000);
    assert_eq!(stream_status(hub.addr, "topic=p", &old_token), 401);
}
