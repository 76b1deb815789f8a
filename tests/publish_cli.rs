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

// ---- `ssehub publish --url`: over HTTP ---------------------------------------------------------

#[test]
fn url_with_https_is_a_usage_error() {
    let out = run_bin(
        &["publish", "--url", "https://127.0.0.1:8443", "-t", "t", "x"],
        b"",
        RUN_TIMEOUT,
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("https is not supported by --url; publish through a local proxy"),
        "{:?}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
}

#[test]
fn url_to_a_closed_port_fails_after_wait_with_a_clear_message() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let out = run_bin(
        &["publish", "--url", &url, "--wait", "300ms", "-t", "t", "x"],
        b"",
        RUN_TIMEOUT,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.elapsed >= Duration::from_millis(300),
        "{:?}",
        out.elapsed
    );
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
    assert!(
        out.stderr.contains("cannot connect") && out.stderr.contains(&format!("127.0.0.1:{port}")),
        "unclear message: {:?}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
}

/// A stand-in for ssehub's `POST /publish`, used ONLY to check the bytes `ssehub publish
/// --url` sends (method, path, headers, body framing, batching, keep-alive) and how it maps
/// answers and statuses to its output and exit code. The end-to-end test against the real
/// server's endpoint lives elsewhere (with the server's `POST /publish` tests).
///
/// A real HTTP/1.1 responder on loopback: each connection on its own thread, requests read
/// in turn (head, then a Content-Length body); every request is recorded. Answers: one line
/// per body line, `{"ok":true,"id":"N"}` with ids counting up from 1, or
/// `{"ok":false,"error":"refused: bad"}` for an event whose data is "bad".
struct FakeHub {
    addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<FakeRequest>>>,
}

#[derive(Debug, Clone)]
struct FakeRequest {
    /// Which accepted connection (0, 1, ...) carried it.
    conn: usize,
    request_line: String,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl FakeRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the fake answers its Nth request (counted over all connections, from 0).
#[derive(Clone, Copy)]
enum Reply {
    Answers,
    /// The answers, then `Connection: close` and the end of the connection.
    AnswersAndClose,
    /// The answers as for keep-alive, then the end of the connection without a word (an
    /// idle timeout).
    AnswersThenDrop,
    /// This status with a text/plain reason, then close.
    Status(u16, &'static str),
    /// Read the request, say nothing, close.
    Hangup,
}

impl FakeHub {
    fn start(reply: fn(usize) -> Reply) -> FakeHub {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::<FakeRequest>::new()));
        let recorded = requests.clone();
        let ids = Arc::new(AtomicU64::new(0));
        let count = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for (conn, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let (recorded, ids, count) = (recorded.clone(), ids.clone(), count.clone());
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut headers = Vec::new();
                        loop {
                            let mut line = String::new();
                            reader.read_line(&mut line).unwrap();
                            let line = line.trim_end_matches(['\r', '\n']);
                            if line.is_empty() {
                                break;
                            }
                            let (name, value) = line.split_once(':').expect("header line");
                            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
                        }
                        let length: usize = headers
                            .iter()
                            .find(|(n, _)| n == "content-length")
                            .map_or(0, |(_, v)| v.parse().expect("Content-Length"));
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        let body = String::from_utf8(body).unwrap();
                        let request = FakeRequest {
                            conn,
                            request_line: request_line.trim_end().to_string(),
                            headers,
                            body: body.clone(),
                        };
                        recorded.lock().unwrap().push(request);
                        let answers = || {
                            body.lines()
                                .map(|l| {
                                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                                    if v["data"] == "bad" {
                                        "{\"ok\":false,\"error\":\"refused: bad\"}\n".to_string()
                                    } else {
                                        let id = ids.fetch_add(1, Ordering::SeqCst) + 1;
                                        format!("{{\"ok\":true,\"id\":\"{id}\"}}\n")
                                    }
                                })
                                .collect::<String>()
                        };
                        let (status, kind, text, close) = match reply(
                            count.fetch_add(1, Ordering::SeqCst),
                        ) {
                            Reply::Answers => ("200 OK", "application/x-ndjson", answers(), false),
                            Reply::AnswersAndClose => {
                                ("200 OK", "application/x-ndjson", answers(), true)
                            }
                            Reply::AnswersThenDrop => {
                                let text = answers();
                                let response = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{text}",
                                    text.len()
                                );
                                let _ = writer.write_all(response.as_bytes());
                                return;
                            }
                            Reply::Status(code, reason) => {
                                let status: &'static str = match code {
                                    401 => "401 Unauthorized",
                                    _ => "503 Service Unavailable",
                                };
                                (status, "text/plain", format!("{reason}\n"), true)
                            }
                            Reply::Hangup => return,
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{}\r\n{text}",
                            text.len(),
                            if close { "Connection: close\r\n" } else { "" },
                        );
                        if writer.write_all(response.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        FakeHub { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<FakeRequest> {
        self.requests.lock().unwrap().clone()
    }
}

#[test]
fn url_posts_ndjson_and_maps_answers_to_ids_and_errors() {
    let hub = FakeHub::start(|_| Reply::Answers);
    let out = run_bin(
        &[
            "publish",
            "--url",
            &hub.url(),
            "--token",
            "tok.en.x",
            "-t",
            "a",
            "-t",
            "b",
            "--event",
            "e",
            "--lines",
        ],
        b"first\nbad\nthird\r\n",
        RUN_TIMEOUT,
    );
    // The error answer: exit 1, its reason on stderr, no id for it.
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stdout, "1\n2\n", "{out:?}");
    assert_eq!(out.stderr, "ssehub publish: refused: bad\n");
    let requests = hub.requests();
    assert_eq!(requests.len(), 1, "one batch: {requests:?}");
    let r = &requests[0];
    assert_eq!(r.request_line, "POST /publish HTTP/1.1");
    assert_eq!(r.header("host"), Some(hub.addr.to_string().as_str()));
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(r.header("authorization"), Some("Bearer tok.en.x"));
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    // The ingest socket's line format, one event per line.
    let line =
        |data: &str| format!("{{\"topics\":[\"a\",\"b\"],\"event\":\"e\",\"data\":\"{data}\"}}\n");
    assert_eq!(r.body, [line("first"), line("bad"), line("third")].concat());

    // One event from DATA, no token: no Authorization header; exit 0.
    let out = run_bin(
        &[
            "publish",
            "--url",
            &hub.url(),
            "--topic",
            "news",
            "--final",
            "hello",
        ],
        b"",
        RUN_TIMEOUT,
    );
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "3\n"), "{out:?}");
    let r = hub.requests().pop().unwrap();
    assert_eq!(r.header("authorization"), None);
    assert_eq!(
        r.body,
        "{\"topic\":\"news\",\"data\":\"hello\",\"final\":true}\n"
    );
}

#[test]
fn url_batches_on_one_keep_alive_connection_and_reconnects_after_close() {
    const N: usize = 2500;
    let mut input = Vec::new();
    for i in 0..N {
        input.extend_from_slice(format!("payload {i}\n").as_bytes());
    }
    let hub = FakeHub::start(|_| Reply::Answers);
    let out = run_bin(
        &["publish", "--url", &hub.url(), "-t", "bulk", "--lines"],
        &input,
        RUN_TIMEOUT,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let want: String = (1..=N).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.stdout, want, "one id per line, in order");
    let requests = hub.requests();
    let lines: Vec<usize> = requests.iter().map(|r| r.body.lines().count()).collect();
    assert_eq!(lines.iter().sum::<usize>(), N);
    assert!(
        lines.iter().all(|&n| n <= 1000),
        "at most 1000 per request: {lines:?}"
    );
    assert!(requests.len() >= 3, "{lines:?}");
    assert!(
        requests.iter().all(|r| r.conn == 0),
        "all on the first connection: {:?}",
        requests.iter().map(|r| r.conn).collect::<Vec<_>>()
    );

    // `Connection: close` after the first answer: the rest goes on a new connection.
    let hub = FakeHub::start(|n| {
        if n == 0 {
            Reply::AnswersAndClose
        } else {
            Reply::Answers
        }
    });
    let out = run_bin(
        &["publish", "--url", &hub.url(), "-t", "bulk", "--lines"],
        &input,
        RUN_TIMEOUT,
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), want.as_str()),
        "{}",
        out.stderr
    );
    let conns: Vec<usize> = hub.requests().iter().map(|r| r.conn).collect();
    assert_eq!(conns[0], 0);
    assert!(conns[1..].iter().all(|&c| c == 1), "{conns:?}");
}

#[test]
fn url_statuses_and_lost_answers_count_every_event_of_the_request() {
    // A refusal: `<status> <reason>` once, every event of the request an error.
    let hub = FakeHub::start(|_| Reply::Status(401, "the token has expired"));
    let out = run_bin(
        &["publish", "--url", &hub.url(), "-t", "t", "--lines"],
        b"a\nb\n",
        RUN_TIMEOUT,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr, "ssehub publish: 401 the token has expired\n");
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);

    // The connection ends after the request but before any answer: reported, never resent.
    let hub = FakeHub::start(|_| Reply::Hangup);
    let out = run_bin(
        &["publish", "--url", &hub.url(), "-t", "t", "x"],
        b"",
        RUN_TIMEOUT,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("no answer from") && out.stderr.contains("not resent"),
        "{:?}",
        out.stderr
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(hub.requests().len(), 1, "sent once: {:?}", hub.requests());
}

#[test]
fn url_lines_sends_a_batch_while_stdin_stays_open() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    // The first connection is dropped by the fake after its answer, as an idle timeout
    // would: the next batch must notice and go on a new one, not be lost.
    let hub = FakeHub::start(|n| {
        if n == 0 {
            Reply::AnswersThenDrop
        } else {
            Reply::Answers
        }
    });
    let mut child = Command::new(BIN)
        .args(["publish", "--url", &hub.url(), "-t", "slow", "--lines"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"one\n").unwrap();
    stdin.flush().unwrap();
    // The first line goes out about 50 ms after it was read, stdin still open.
    let first = wait_for(Duration::from_secs(5), || !hub.requests().is_empty());
    if !first {
        let _ = child.kill();
    }
    assert!(first, "no request while stdin stays open");
    std::thread::sleep(Duration::from_millis(200));
    stdin.write_all(b"two\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n");
    let requests = hub.requests();
    let bodies: Vec<(usize, usize)> = requests
        .iter()
        .map(|r| (r.conn, r.body.lines().count()))
        .collect();
    assert_eq!(
        bodies,
        [(0, 1), (1, 1)],
        "one line per request, a new connection"
    );
}
