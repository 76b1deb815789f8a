//! `ssehub publish` (protocol 3.3): prints each id, exits non-zero with the server's reason on
//! an error answer, reads stdin with `-` or `--lines`, and retries connecting for `--wait`.
mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

const RUN_TIMEOUT: Duration = Duration::from_secs(15);

fn publish(socket: &Path, args: &[&str], stdin: &[u8]) -> BinOutput {
    let mut all = vec!["publish", "--socket", socket.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let out = run_bin(&all, stdin, RUN_TIMEOUT);
    assert!(!out.timed_out, "publish {args:?} hung: {out:?}");
    out
}

/// The one id printed by a successful run.
fn printed_id(out: &BinOutput) -> u64 {
    assert_eq!(out.code, Some(0), "publish failed: {out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected one id line, got {:?}", out.stdout);
    assert!(out.stdout.ends_with('\n'), "{:?}", out.stdout);
    lines[0]
        .parse()
        .unwrap_or_else(|_| panic!("not an id: {:?}", out.stdout))
}

#[test]
fn prints_the_id_the_subscriber_sees() {
    let server = Server::start();
    let mut sub = server.subscribe("topic=news");
    let out = publish(&server.socket, &["--topic", "news", "hello world"], b"");
    let id = printed_id(&out);
    assert_eq!(sub.read_event(), format!("id: {id}\ndata: hello world\n\n"));
    let id2 = printed_id(&publish(&server.socket, &["-t", "news", "again"], b""));
    assert!(id2 > id);
    assert_eq!(sub.read_event(), format!("id: {id2}\ndata: again\n\n"));
}

#[test]
fn event_type() {
    let server = Server::start();
    let mut sub = server.subscribe("topic=news");
    let id = printed_id(&publish(
        &server.socket,
        &[
            "--topic",
            "news",
            "--event",
            "notification",
            "{\"title\":\"Hi\"}",
        ],
        b"",
    ));
    assert_eq!(
        sub.read_event(),
        format!("id: {id}\nevent: notification\ndata: {{\"title\":\"Hi\"}}\n\n")
    );
}

#[test]
fn several_topics() {
    let server = Server::start();
    let mut a = server.subscribe("topic=a");
    let mut b = server.subscribe("topic=b");
    let mut both = server.subscribe("topic=a&topic=b");
    let id = printed_id(&publish(
        &server.socket,
        &["--topic", "a", "--topic", "b", "shared"],
        b"",
    ));
    let want = format!("id: {id}\ndata: shared\n\n");
    assert_eq!(a.read_event(), want);
    assert_eq!(b.read_event(), want);
    assert_eq!(both.read_event(), want);
    // Exactly once on the stream that has both topics: the next thing is the next event.
    let mut p = server.producer();
    let next = p.publish("b", "next");
    assert_eq!(both.read_event(), format!("id: {next}\ndata: next\n\n"));
}

#[test]
fn dash_reads_stdin_dropping_one_trailing_newline() {
    let server = Server::start();
    let mut sub = server.subscribe("topic=in");
    let id = printed_id(&publish(
        &server.socket,
        &["--topic", "in", "-"],
        b"line one\nline two\n",
    ));
    assert_eq!(
        sub.read_event(),
        format!("id: {id}\ndata: line one\ndata: line two\n\n")
    );
    // Only one trailing newline goes: the second stays, as an empty last line.
    let id = printed_id(&publish(&server.socket, &["--topic", "in", "-"], b"x\n\n"));
    assert_eq!(sub.read_event(), format!("id: {id}\ndata: x\ndata:\n\n"));
    // No trailing newline: nothing is dropped.
    let id = printed_id(&publish(&server.socket, &["--topic", "in", "-"], b"as is"));
    assert_eq!(sub.read_event(), format!("id: {id}\ndata: as is\n\n"));
}

#[test]
fn lines_publishes_one_event_per_line() {
    let server = Server::start();
    let mut sub = server.subscribe("topic=ln");
    let out = publish(
        &server.socket,
        &["--topic", "ln", "--lines"],
        b"first\nsecond\nthird\n",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let ids: Vec<u64> = out
        .stdout
        .lines()
        .map(|l| l.parse().unwrap_or_else(|_| panic!("not an id: {l:?}")))
        .collect();
    assert_eq!(ids.len(), 3, "one id per line: {:?}", out.stdout);
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");
    for (id, data) in ids.iter().zip(["first", "second", "third"]) {
        assert_eq!(sub.read_event(), format!("id: {id}\ndata: {data}\n\n"));
    }
}

#[test]
fn lines_with_a_long_input_does_not_deadlock() {
    const N: usize = 20_000;
    let server = Server::start();
    let mut input = Vec::new();
    for i in 0..N {
        input.extend_from_slice(format!("payload number {i}\n").as_bytes());
    }
    let out = publish(&server.socket, &["--topic", "bulk", "--lines"], &input);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let ids: Vec<u64> = out.stdout.lines().map(|l| l.parse().expect("id")).collect();
    assert_eq!(ids.len(), N);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
}

#[test]
fn error_answer_exits_non_zero_with_the_servers_reason() {
    let server = Server::start();
    let mut p = server.producer();
    let answer = p.request(r#"{"topic":"a b","data":"x"}"#);
    let reason = parse_error_answer(&answer).expect("the server refuses topic \"a b\"");
    let out = publish(&server.socket, &["--topic", "a b", "x"], b"");
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.code.is_some(), "killed by a signal: {out:?}");
    assert!(
        out.stderr.contains(&reason),
        "stderr {:?} lacks the server's reason {reason:?}",
        out.stderr
    );
    assert!(
        out.stdout.trim().is_empty(),
        "no id printed: {:?}",
        out.stdout
    );
    // The reserved event type is refused the same way.
    let out = publish(
        &server.socket,
        &["--topic", "t", "--event", "reset", "x"],
        b"",
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("reset"), "{:?}", out.stderr);
}

#[test]
fn wait_rides_over_a_server_that_comes_up_late() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("late.sock");
    let sock_arg = socket.to_str().unwrap();
    let run = spawn_bin(
        &[
            "publish", "--socket", sock_arg, "--wait", "3s", "--topic", "late", "made it",
        ],
        b"",
    );
    std::thread::sleep(Duration::from_millis(700));
    let server = Server::start_at_socket(&socket, &[]);
    let out = run.finish(RUN_TIMEOUT);
    assert!(!out.timed_out, "{out:?}");
    let id = printed_id(&out);
    // The id is a real one from this server: the next publish gets a greater id.
    let mut p = server.producer();
    assert!(p.publish("late", "after") > id);
}

#[test]
fn no_server_fails_quickly_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let out = publish(&socket, &["--wait", "200ms", "--topic", "t", "x"], b"");
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.code.is_some(), "killed by a signal: {out:?}");
    assert!(
        out.elapsed < Duration::from_secs(3),
        "took {:?} with --wait 200ms",
        out.elapsed
    );
    assert!(
        out.elapsed >= Duration::from_millis(200),
        "gave up after {:?}, before --wait 200ms",
        out.elapsed
    );
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("connect") && out.stderr.contains("nobody.sock"),
        "unclear message: {:?}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
}

#[test]
fn wait_rides_over_a_crash_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("restart.sock");
    let mut crashed = Server::start_at_socket(&socket, &[]);
    crashed.child.kill().unwrap();
    crashed.child.wait().unwrap();
    assert!(socket.exists(), "SIGKILL leaves the socket file behind");
    // Connecting now is refused (stale file); --wait keeps trying until the restart.
    let run = spawn_bin(
        &[
            "publish",
            "--socket",
            socket.to_str().unwrap(),
            "--wait",
            "5s",
            "--topic",
            "r",
            "after restart",
        ],
        b"",
    );
    std::thread::sleep(Duration::from_millis(700));
    let server = Server::start_at_socket(&socket, &[]);
    let out = run.finish(RUN_TIMEOUT);
    assert!(!out.timed_out, "{out:?}");
    let id = printed_id(&out);
    let mut p = server.producer();
    assert!(p.publish("r", "later") > id);
}

// ---- `ssehub token --publish`: publisher tokens for `POST /publish` ---------------------------

/// The claims of a token printed by `ssehub token ARGS`, verified with the secret.
fn minted_claims(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["token", "--secret", "pub-secret"];
    all.extend_from_slice(args);
    let out = run_bin(&all, b"", RUN_TIMEOUT);
    assert_eq!(out.code, Some(0), "ssehub token {args:?}: {out:?}");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(
        out.stdout.trim(),
        &jsonwebtoken::DecodingKey::from_secret(b"pub-secret"),
        &v,
    )
    .unwrap_or_else(|e| panic!("{:?} does not verify: {e}", out.stdout))
    .claims
}

#[test]
fn token_publish_patterns_become_the_publish_claim() {
    let claims = minted_claims(&["--publish", "a", "--publish", "b*", "--ttl", "10m"]);
    assert_eq!(
        claims["publish"],
        serde_json::json!(["a", "b*"]),
        "{claims}"
    );
    let subscribe = claims.get("subscribe").cloned().unwrap_or_default();
    assert!(
        subscribe.is_null() || subscribe == serde_json::json!([]),
        "a publisher-only token grants no reading: {claims}"
    );
    assert!(claims["exp"].as_u64().is_some(), "{claims}");
    // Both grants in one token.
    let claims = minted_claims(&["--subscribe", "news", "--publish", "news:*"]);
    assert_eq!(claims["subscribe"], serde_json::json!(["news"]), "{claims}");
    assert_eq!(claims["publish"], serde_json::json!(["news:*"]), "{claims}");
    // A subscriber token as before: no publish claim at all.
    let claims = minted_claims(&["--subscribe", "news"]);
    assert!(claims.get("publish").is_none(), "{claims}");
}

#[test]
fn token_needs_a_subscribe_or_publish_pattern() {
    let out = run_bin(&["token", "--secret", "s", "--ttl", "1h"], b"", RUN_TIMEOUT);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("--subscribe") && out.stderr.contains("--publish"),
        "{:?}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
}
