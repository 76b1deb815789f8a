//! `POST /publish` (protocol 3.4) over real sockets against the real binary: publisher
//! tokens (minted by `ssehub token --publish`), `publish.admin_open`, the three body
//! formats and their answers, HTTP/1.1 framing (`Content-Length`, chunked, `100-continue`,
//! pipelined keep-alive, `Connection: close`), every refusal (400/401/403/413/415/417/501),
//! a body that stops arriving, and nothing published from a partial or refused body —
//! checked by a subscriber that must see exactly the events that were answered `ok`.
mod common;
use common::*;
use std::time::Duration;

const SECRET: &str = "publish-test-secret";

/// Mints a token with the real `ssehub token` command: `--publish` and `--subscribe`
/// patterns.
fn mint(publish: &[&str], subscribe: &[&str]) -> String {
    let mut args = vec!["token".to_string(), "--secret".into(), SECRET.into()];
    for p in publish {
        args.extend(["--publish".to_string(), p.to_string()]);
    }
    for p in subscribe {
        args.extend(["--subscribe".to_string(), p.to_string()]);
    }
    let out = run_bin(&args, b"", Duration::from_secs(10));
    assert_eq!(out.code, Some(0), "ssehub token failed: {}", out.stderr);
    out.stdout.trim().to_string()
}

fn with_secret() -> Server {
    Server::start_with(&[("auth", &format!("secret = {SECRET:?}"))])
}

/// One request on a fresh connection (closed after): (status, head, body).
fn post(s: &Server, headers: &str, body: &str) -> (u16, String, String) {
    let mut c = Client::connect(s.addr);
    c.send(&format!(
        "POST /publish HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    c.read_response()
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

const NDJSON: &str = "Content-Type: application/x-ndjson\r\n";
const JSON: &str = "Content-Type: application/json\r\n";
const FORM: &str = "Content-Type: application/x-www-form-urlencoded\r\n";

/// The ids of `{"ok":true,...}` lines, None for error lines.
fn answer_ids(body: &str) -> Vec<Option<u64>> {
    body.lines().map(parse_ok).collect()
}

/// The `data:` of the next events on a stream, `n` of them.
fn read_data(c: &mut Client, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let e = c.read_event();
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("no data in {e:?}"))
                .to_string()
        })
        .collect()
}

/// Nothing more arrives on the stream within `wait` but keepalive comments.
fn nothing_more(c: &mut Client, wait: Duration) {
    let rest = c.read_for(wait);
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.lines().all(|l| l.is_empty() || l.starts_with(':')),
        "unexpected events: {text:?}"
    );
}

#[test]
fn publisher_tokens_decide_who_publishes_where() {
    let s = with_secret();
    let mut sub = s.subscribe("topic=news.a&topic=other");
    let line = |topic: &str, data: &str| format!("{{\"topic\":\"{topic}\",\"data\":\"{data}\"}}\n");
    // No token: 401 with the Bearer challenge; nothing published.
    let (status, head, body) = post(&s, NDJSON, &line("news.a", "x"));
    assert_eq!(status, 401, "{head}{body}");
    assert!(head.contains("WWW-Authenticate: Bearer\r\n"), "{head}");
    assert!(head.contains("Connection: close\r\n"), "{head}");
    // A subscriber's token (no publish claim): 403.
    let sub_only = mint(&[], &["news.*"]);
    let (status, _, body) = post(&s, &format!("{NDJSON}{}", bearer(&sub_only)), "");
    assert_eq!(
        (status, body.as_str()),
        (403, "the token has no publish claim\n")
    );
    // A token signed with another secret: 401.
    let forged = {
        let args = [
            "token",
            "--secret",
            "another",
            "--publish",
            "news.*",
            "--ttl",
            "1h",
        ];
        run_bin(&args, b"", Duration::from_secs(10))
            .stdout
            .trim()
            .to_string()
    };
    assert_eq!(post(&s, &format!("{NDJSON}{}", bearer(&forged)), "").0, 401);
    // A publisher token for `news.*`: lines for other topics are refused one by one, the
    // rest published, answers in order.
    let token = mint(&["news.*"], &[]);
    let body = format!(
        "{}{}{}",
        line("news.a", "one"),
        line("other", "nope"),
        line("news.a", "two")
    );
    let (status, head, answers) = post(&s, &format!("{NDJSON}{}", bearer(&token)), &body);
    assert_eq!(status, 200, "{head}{answers}");
    assert!(
        head.contains("Content-Type: application/x-ndjson\r\n"),
        "{head}"
    );
    let lines: Vec<&str> = answers.lines().collect();
    assert_eq!(lines.len(), 3, "{answers}");
    assert!(parse_ok(lines[0]).is_some());
    assert_eq!(
        lines[1],
        r#"{"ok":false,"error":"the token does not cover topic \"other\""}"#
    );
    assert!(parse_ok(lines[2]).is_some());
    assert_eq!(read_data(&mut sub, 2), ["one", "two"]);
    nothing_more(&mut sub, Duration::from_millis(300));
    // A multi-topic event needs every topic covered.
    let (_, _, answers) = post(
        &s,
        &format!("{JSON}{}", bearer(&token)),
        r#"{"topics":["news.a","other"],"data":"both"}"#,
    );
    assert!(
        answers.contains("does not cover topic \\\"other\\\""),
        "{answers}"
    );
}

#[test]
fn without_keys_publishing_needs_admin_open_on_the_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let config = write_config(
        dir.path(),
        &format!("admin_listen = \"127.0.0.1:{admin}\""),
        "[publish]\nadmin_open = true\n",
    );
    let s = Server::start_config(&config, |_| {});
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    // The public listener: no key to check a token with: 403 saying what to configure.
    let (status, _, body) = post(&s, NDJSON, "{\"topic\":\"a\",\"data\":\"x\"}\n");
    assert_eq!(status, 403);
    assert!(body.contains("auth.secret"), "{body}");
    // The admin listener with admin_open: no token needed.
    let mut sub = s.subscribe("topic=a");
    let mut c = Client::connect(admin_addr);
    c.send(
        "POST /publish HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 25\r\n\r\n{\"topic\":\"a\",\"data\":\"ok\"}",
    );
    let (status, head, body) = c.read_response();
    assert_eq!(status, 200, "{head}{body}");
    assert!(parse_ok(&body).is_some(), "{body}");
    assert_eq!(read_data(&mut sub, 1), ["ok"]);
}

/// A free TCP port on loopback (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn json_and_form_bodies_answer_with_a_status_that_fits() {
    let s = with_secret();
    let token = mint(&["*"], &[]);
    let auth = bearer(&token);
    let mut sub = s.subscribe("topic=news");
    // JSON: one event, 200 with the answer object.
    let (status, head, body) = post(
        &s,
        &format!("{JSON}{auth}"),
        "{\n  \"topic\": \"news\",\n  \"event\": \"greet\",\n  \"data\": \"hi\"\n}",
    );
    assert_eq!(status, 200, "{head}{body}");
    assert!(
        head.contains("Content-Type: application/json\r\n"),
        "{head}"
    );
    let id = parse_ok(&body).unwrap_or_else(|| panic!("{body}"));
    let e = sub.read_event();
    assert_eq!(e, format!("id: {id}\nevent: greet\ndata: hi\n\n"));
    // A refused event: 400 with the answer object as body.
    let (status, _, body) = post(&s, &format!("{JSON}{auth}"), r#"{"topic":"news"}"#);
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"ok":false,"error":"missing field \"data\""}"#)
    );
    let (status, _, body) = post(&s, &format!("{JSON}{auth}"), "");
    assert_eq!(status, 400, "{body}");
    // A closed topic: 409.
    let (status, _, _) = post(
        &s,
        &format!("{JSON}{auth}"),
        r#"{"topic":"done","data":"last","final":true}"#,
    );
    assert_eq!(status, 200);
    let (status, _, body) = post(
        &s,
        &format!("{JSON}{auth}"),
        r#"{"topic":"done","data":"after"}"#,
    );
    assert_eq!(status, 409, "{body}");
    // Admin commands stay on the ingest socket.
    let (status, _, body) = post(&s, &format!("{JSON}{auth}"), r#"{"admin":"reload"}"#);
    assert_eq!(status, 400, "{body}");
    // Form (Mercure's fields): 200 text/plain with the id; `type` is the event name.
    let (status, head, body) = post(
        &s,
        &format!("{FORM}{auth}"),
        "topic=news&data=hello+world%21&type=note",
    );
    assert_eq!(status, 200, "{head}{body}");
    assert!(head.contains("Content-Type: text/plain"), "{head}");
    let id: u64 = body.trim().parse().unwrap_or_else(|_| panic!("{body}"));
    let e = sub.read_event();
    assert_eq!(e, format!("id: {id}\nevent: note\ndata: hello world!\n\n"));
    // Fields Mercure has and ssehub does not: refused with a reason, never ignored.
    for field in ["private=on", "id=abc", "retry=10"] {
        let (status, _, body) = post(
            &s,
            &format!("{FORM}{auth}"),
            &format!("topic=news&data=x&{field}"),
        );
        assert_eq!(status, 400, "{field}: {body}");
        assert!(body.contains("not supported"), "{field}: {body}");
    }
    let (status, _, _) = post(&s, &format!("{FORM}{auth}"), "data=x");
    assert_eq!(status, 400, "a form without topic");
}

/// Chunked bodies (extensions and trailers tolerated), `Expect: 100-continue`, and a
/// malformed chunk size: `400`, nothing of that body published.
#[test]
fn chunked_bodies_and_100_continue() {
    let s = with_secret();
    let auth = bearer(&mint(&["*"], &[]));
    let mut sub = s.subscribe("topic=c");
    let mut c = Client::connect(s.addr);
    c.send(&format!(
        "POST /publish HTTP/1.1\r\nHost: t\r\n{NDJSON}{auth}Transfer-Encoding: chunked\r\n\
         Expect: 100-continue\r\n\r\n"
    ));
    // The interim answer comes before any body byte was sent.
    assert_eq!(c.read_head(), "HTTP/1.1 100 Continue\r\n\r\n");
    let first = "{\"topic\":\"c\",\"data\":\"one\"}\n{\"topic\":\"c\",";
    let second = "\"data\":\"two\"}\n";
    c.send(&format!(
        "{:x};ext=1;quoted=\"v\"\r\n{first}\r\n{:X}\r\n{second}\r\n0\r\nX-Trailer: t\r\n\r\n",
        first.len(),
        second.len()
    ));
    let (status, head, body) = c.read_response();
    assert_eq!(status, 200, "{head}{body}");
    assert!(!head.contains("Connection: close"), "keep-alive: {head}");
    assert_eq!(answer_ids(&body).iter().flatten().count(), 2, "{body}");
    assert_eq!(read_data(&mut sub, 2), ["one", "two"]);
    // The same connection takes another request: a malformed chunk size after a good
    // chunk: 400, closed, and the good chunk's event is not published.
    c.send(&format!(
        "POST /publish HTTP/1.1\r\nHost: t\r\n{NDJSON}{auth}Transfer-Encoding: chunked\r\n\r\n\
         1b\r\n{{\"topic\":\"c\",\"data\":\"bad\"}}\r\nzz\r\n"
    ));
    let (status, head, body) = c.read_response();
    assert_eq!(status, 400, "{head}{body}");
    assert!(head.contains("Connection: close"), "{head}");
    assert!(c.read_to_close(Duration::from_secs(5)).is_some());
    nothing_more(&mut sub, Duration::from_millis(300));
}

/// Keep-alive with pipelined requests: answers in request order on one connection, the
/// body of one never read as the head of the next; `Connection: close` honoured.
#[test]
fn pipelined_publishes_on_one_connection() {
    let s = with_secret();
    let auth = bearer(&mint(&["*"], &[]));
    let mut sub = s.subscribe("topic=p");
    let mut c = Client::connect(s.addr);
    let mut all = String::new();
    for i in 0..5 {
        let body = format!("{{\"topic\":\"p\",\"data\":\"{i}\"}}");
        all.push_str(&format!(
            "POST /publish HTTP/1.1\r\nHost: t\r\n{JSON}{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    all.push_str("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let form = "topic=p&data=last";
    all.push_str(&format!(
        "POST /publish HTTP/1.1\r\nHost: t\r\n{FORM}{auth}Connection: close\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    ));
    c.send(&all);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (status, _, body) = c.read_response();
        assert_eq!(status, 200, "{body}");
        ids.push(parse_ok(&body).unwrap());
    }
    assert_eq!(c.read_response().2, "ok\n", "/healthz in its place");
    let (status, head, body) = c.read_response();
    assert_eq!(status, 200);
    assert!(head.contains("Connection: close"), "{head}");
    ids.push(body.trim().parse().unwrap());
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(
        c.read_to_close(Duration::from_secs(5)),
        Some(Vec::new()),
        "closed after the last answer"
    );
    assert_eq!(read_data(&mut sub, 6), ["0", "1", "2", "3", "4", "last"]);
}

/// Every refusal of a request, before or while its body is read: status, reason, close,
/// and nothing published.
#[test]
fn refused_requests_publish_nothing() {
    let s = Server::start_with(&[
        ("auth", &format!("secret = {SECRET:?}")),
        ("publish", "max_body_bytes = 1000"),
    ]);
    let auth = bearer(&mint(&["*"], &[]));
    let mut sub = s.subscribe("topic=r");
    let event = r#"{"topic":"r","data":"x"}"#;
    let refused = |head: &str, body: &str, want: u16| {
        let mut c = Client::connect(s.addr);
        c.send(&format!(
            "POST /publish HTTP/1.1\r\nHost: t\r\n{head}\r\n{body}"
        ));
        let (status, h, reason) = c.read_response();
        assert_eq!(status, want, "{head}: {h}{reason}");
        assert!(h.contains("Connection: close"), "{head}: {h}");
        assert!(
            reason.ends_with('\n') && reason.lines().count() == 1,
            "{reason:?}"
        );
        assert!(
            c.read_to_close(Duration::from_secs(5)).is_some(),
            "{head}: closed"
        );
        reason
    };
    // A declared length over the limit: 413 at once, before any body byte.
    let reason = refused(&format!("{NDJSON}{auth}Content-Length: 1001\r\n"), "", 413);
    assert!(reason.contains("1000"), "{reason}");
    // A chunked body that grows over the limit: 413 when a chunk says so.
    let big = "x".repeat(600);
    refused(
        &format!("{NDJSON}{auth}Transfer-Encoding: chunked\r\n"),
        &format!("258\r\n{big}\r\n258\r\n{big}\r\n0\r\n\r\n"),
        413,
    );
    let len = format!("Content-Length: {}\r\n", event.len());
    refused(
        &format!("Content-Type: text/plain\r\n{auth}{len}"),
        event,
        415,
    );
    refused(&format!("{auth}{len}"), event, 415);
    // Smuggling shapes and unknown codings.
    refused(
        &format!("{JSON}{auth}{len}Transfer-Encoding: chunked\r\n"),
        event,
        400,
    );
    refused(
        &format!("{JSON}{auth}{len}Content-Length: 3\r\n"),
        event,
        400,
    );
    refused(
        &format!("{JSON}{auth}Transfer-Encoding: gzip\r\n"),
        event,
        501,
    );
    refused(
        &format!("{JSON}{auth}{len}Expect: something\r\n"),
        event,
        417,
    );
    // Other methods.
    let mut c = Client::connect(s.addr);
    c.send("GET /publish HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, head, _) = c.read_response();
    assert_eq!(status, 405);
    assert!(head.contains("Allow: POST\r\n"), "{head}");
    nothing_more(&mut sub, Duration::from_millis(300));
    // The same event, sent properly, is published: the refusals were about the requests.
    assert_eq!(post(&s, &format!("{JSON}{auth}"), event).0, 200);
    assert_eq!(read_data(&mut sub, 1), ["x"]);
}

/// A body that stops arriving is closed at `http.request_timeout` and nothing of it is
/// published; so is one whose client goes away mid-body.
#[test]
fn a_partial_body_publishes_nothing() {
    let s = Server::start_with(&[
        ("http", "request_timeout = \"500ms\""),
        ("auth", &format!("secret = {SECRET:?}")),
    ]);
    let auth = bearer(&mint(&["*"], &[]));
    let mut sub = s.subscribe("topic=slow");
    let lines = "{\"topic\":\"slow\",\"data\":\"1\"}\n{\"topic\":\"slow\",\"data\":\"2\"}\n";
    let mut c = Client::connect(s.addr);
    c.send(&format!(
        "POST /publish HTTP/1.1\r\nHost: t\r\n{NDJSON}{auth}Content-Length: {}\r\n\r\n{}",
        lines.len() + 10,
        lines
    ));
    let started = std::time::Instant::now();
    let rest = c.read_to_close(Duration::from_secs(5)).expect("closed");
    assert!(
        rest.is_empty(),
        "no answer: {:?}",
        String::from_utf8_lossy(&rest)
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // After a publish on a keep-alive connection, the next request's body has the same
    // deadline.
    let mut c = Client::connect(s.addr);
    let one = "{\"topic\":\"other\",\"data\":\"fine\"}";
    c.send(&format!(
        "POST /publish HTTP/1.1\r\nHost: t\r\n{JSON}{auth}Content-Length: {}\r\n\r\n{one}",
        one.len()
    ));
    assert_eq!(c.read_response().0, 200);
    c.send(&format!(
        "POST /publish HTTP/1.1\r\nHost: t\r\n{NDJSON}{auth}Content-Length: {}\r\n\r\n{}",
        lines.len() + 10,
        lines
    ));
    closed_by_the_timeout(&mut c);
    // An idle keep-alive publisher is closed after the same time.
    let mut c = Client::connect(s.addr);
    c.send(&format!(
        "POST /publish HTTP/1.1\r\nHost: t\r\n{JSON}{auth}Content-Length: {}\r\n\r\n{one}",
        one.len()
    ));
    assert_eq!(c.read_response().0, 200);
    closed_by_the_timeout(&mut c);
    // A client that goes away mid-body (chunked, complete lines sent).
    let mut c = Client::connect(s.addr);
    c.send(&format!(
        "POST /publish HTTP/1.1\r\nHost: t\r\n{NDJSON}{auth}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{lines}\r\n",
        lines.len()
    ));
    std::thread::sleep(Duration::from_millis(100));
    drop(c);
    nothing_more(&mut sub, Duration::from_millis(800));
    let m = metrics(&s);
    // The two events of the complete requests, nothing else.
    assert!(
        m.contains("ssehub_publishes_total{transport=\"http\",result=\"ok\"} 2"),
        "{m}"
    );
}

/// The server closes `c` without a word, within about `http.request_timeout` (500 ms).
fn closed_by_the_timeout(c: &mut Client) {
    let started = std::time::Instant::now();
    assert_eq!(c.read_to_close(Duration::from_secs(5)), Some(Vec::new()));
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

/// `GET /metrics` text (loopback client).
fn metrics(s: &Server) -> String {
    let mut c = Client::connect(s.addr);
    c.send("GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    c.read_response().2
}

/// With the on-disk log in `fsync` mode the answer waits for the sync, and every event
/// answered `ok` is there after a restart; `/metrics` counts publishes by transport.
#[test]
fn answers_wait_for_the_log_and_metrics_count_by_transport() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let extra = format!(
        "[auth]\nsecret = {SECRET:?}\n[history]\ndata_dir = {:?}\ndurability = \"fsync\"\n",
        data.display().to_string()
    );
    let config = write_config(dir.path(), "", &extra);
    let auth = bearer(&mint(&["*"], &[]));
    let mut body = String::new();
    for i in 0..300 {
        body.push_str(&format!("{{\"topic\":\"d\",\"data\":\"{i}\"}}\n"));
    }
    body.push_str("not json\n");
    let last_id;
    {
        let s = Server::start_config(&config, |_| {});
        let (status, _, answers) = post(&s, &format!("{NDJSON}{auth}"), &body);
        assert_eq!(status, 200);
        let ids = answer_ids(&answers);
        assert_eq!(ids.len(), 301);
        assert!(ids[..300].iter().all(Option::is_some) && ids[300].is_none());
        last_id = ids[299].unwrap();
        s.producer().publish("d", "socket");
        let m = metrics(&s);
        for want in [
            "ssehub_publishes_total{transport=\"http\",result=\"ok\"} 300",
            "ssehub_publishes_total{transport=\"http\",result=\"error\"} 1",
            "ssehub_publishes_total{transport=\"socket\",result=\"ok\"} 1",
            "ssehub_publish_requests_total{status=\"200\"} 1",
        ] {
            assert!(m.contains(want), "{want} in {m}");
        }
        s.signal("KILL");
    }
    let s = Server::start_config(&config, |_| {});
    let mut c = Client::connect(s.addr);
    c.send("GET /events?topic=d&lastEventId=0 HTTP/1.1\r\nHost: t\r\n\r\n");
    let _ = c.read_head();
    let got = String::from_utf8(c.read_until(format!("id: {last_id}\ndata: 299\n\n").as_bytes()))
        .unwrap();
    let data: Vec<&str> = got
        .split("\n\n")
        .filter(|block| block.starts_with("id: "))
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .collect();
    let want: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    assert_eq!(
        data, want,
        "every event answered ok is in the log, in order"
    );
}

/// `ssehub publish --url` against the real endpoint: one event, a `--lines` input larger
/// than one batch, a topic the token does not cover, and no token at all.
#[test]
fn the_cli_publishes_over_http() {
    let s = with_secret();
    let token = mint(&["cli*"], &[]);
    let url = format!("http://{}", s.addr);
    let mut sub = s.subscribe("topic=cli");
    let out = run_bin(
        &[
            "publish", "--url", &url, "--token", &token, "--topic", "cli", "hello",
        ],
        b"",
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let id: u64 = out.stdout.trim().parse().unwrap();
    assert_eq!(sub.read_event(), format!("id: {id}\ndata: hello\n\n"));
    // 2500 lines: three requests on one connection; every id printed, in order.
    let input: String = (0..2500).map(|i| format!("l{i}\n")).collect();
    let out = run_bin(
        &[
            "publish", "--url", &url, "--token", &token, "--topic", "cli", "--lines",
        ],
        input.as_bytes(),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let ids: Vec<u64> = out.stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids.len(), 2500);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let data = read_data(&mut sub, 2500);
    assert_eq!(data[0], "l0");
    assert_eq!(data[2499], "l2499");
    // Refusals: exit 1 with the reason on stderr.
    let out = run_bin(
        &[
            "publish", "--url", &url, "--token", &token, "--topic", "other", "x",
        ],
        b"",
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("the token does not cover topic"),
        "{}",
        out.stderr
    );
    let out = run_bin(
        &["publish", "--url", &url, "--topic", "cli", "x"],
        b"",
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    nothing_more(&mut sub, Duration::from_millis(300));
}
