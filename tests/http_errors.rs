//! protocol 2: every HTTP answer of the stream endpoint and its neighbours over a raw socket:
//! status, one-line plain-text reason, `Allow`, and whether the connection stays open.
mod common;
use common::*;
use std::time::Duration;

/// Sends raw bytes on a new connection.
fn send(server: &Server, raw: &str) -> Client {
    let mut c = Client::connect(server.addr);
    c.send(raw);
    c
}

/// Reads one plain answer and checks it is `status` with a one-line text reason.
fn expect_plain(c: &mut Client, status: u16) -> (String, String) {
    let (got, head, body) = c.read_response();
    assert_eq!(got, status, "head: {head:?} body: {body:?}");
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "status line: {head:?}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ncontent-type: text/plain"),
        "not plain text: {head:?}"
    );
    assert!(
        body.ends_with('\n') && body.len() > 1 && body.matches('\n').count() == 1,
        "reason must be one non-empty line: {body:?}"
    );
    assert!(!body.contains('\r'), "reason must be one line: {body:?}");
    (head, body)
}

/// The server closes the connection after its answer (EOF, nothing more).
fn expect_closed(c: &mut Client) {
    let rest = c
        .read_to_close(Duration::from_secs(5))
        .expect("connection not closed by the server");
    assert!(
        rest.is_empty(),
        "bytes after the answer: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// The connection still serves another request.
fn expect_open(c: &mut Client) {
    c.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, _, body) = c.read_response();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Opens a stream with raw request bytes; checks head and retry; returns the client.
fn expect_stream(server: &Server, raw: &str) -> Client {
    let mut c = send(server, raw);
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
    assert_eq!(
        header_value(&head, "content-type").as_deref(),
        Some("text/event-stream; charset=utf-8")
    );
    let retry = c.read_line();
    assert!(retry.starts_with("retry: "), "{retry:?}");
    c
}

#[test]
fn unknown_path_is_404_and_keeps_the_connection() {
    let server = Server::start();
    for path in [
        "/",
        "/nope",
        "/events/",
        "/eventsx?topic=a",
        "/Events?topic=a",
    ] {
        let mut c = send(&server, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        expect_plain(&mut c, 404);
        expect_open(&mut c);
        // And again: the connection keeps serving.
        c.send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        expect_plain(&mut c, 404);
    }
}

#[test]
fn other_methods_are_405_with_allow() {
    let server = Server::start();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let mut c = send(
            &server,
            &format!("{method} /events?topic=a HTTP/1.1\r\nHost: t\r\n\r\n"),
        );
        let (head, _) = expect_plain(&mut c, 405);
        assert_eq!(
            header_value(&head, "allow").as_deref(),
            Some("GET, HEAD, OPTIONS"),
            "{method}: {head:?}"
        );
        // 405 is not one of the answers that close: the connection serves on.
        expect_open(&mut c);
    }
}

#[test]
fn missing_topic_is_400_and_closes() {
    let server = Server::start();
    for target in ["/events", "/events?", "/events?foo=bar", "/events?topic="] {
        let mut c = send(
            &server,
            &format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"),
        );
        expect_plain(&mut c, 400);
        expect_closed(&mut c);
    }
}

#[test]
fn bad_topic_is_400_and_closes() {
    let server = Server::start();
    let long = "a".repeat(201);
    for query in [
        "topic=a%20b",
        "topic=a+b",
        "topic=a%zz",
        "topic=%00",
        "topic=caf%C3%A9",
        "topic=a&topic=b%3Fc",
        &format!("topic={long}"),
    ] {
        let mut c = send(
            &server,
            &format!("GET /events?{query} HTTP/1.1\r\nHost: t\r\n\r\n"),
        );
        expect_plain(&mut c, 400);
        expect_closed(&mut c);
    }
    // 200 bytes is still a valid name.
    let mut ok = expect_stream(
        &server,
        &format!(
            "GET /events?topic={} HTTP/1.1\r\nHost: t\r\n\r\n",
            "a".repeat(200)
        ),
    );
    let id = server.producer().publish(&"a".repeat(200), "max");
    assert_eq!(ok.read_event(), format!("id: {id}\ndata: max\n\n"));
}

#[test]
fn topic_count_over_max_is_400_and_32_is_fine() {
    let server = Server::start();
    let query = |n: usize| {
        (0..n)
            .map(|i| format!("topic=t{i}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let mut c = send(
        &server,
        &format!("GET /events?{} HTTP/1.1\r\nHost: t\r\n\r\n", query(33)),
    );
    expect_plain(&mut c, 400);
    expect_closed(&mut c);
    let mut ok = expect_stream(
        &server,
        &format!("GET /events?{} HTTP/1.1\r\nHost: t\r\n\r\n", query(32)),
    );
    let id = server.producer().publish("t31", "last topic");
    assert_eq!(ok.read_event(), format!("id: {id}\ndata: last topic\n\n"));
    // Duplicates do not count against the limit.
    let dup = format!("{}&topic=t0&topic=t31", query(32));
    expect_stream(
        &server,
        &format!("GET /events?{dup} HTTP/1.1\r\nHost: t\r\n\r\n"),
    );
}

#[test]
fn configured_max_topics_is_honoured() {
    let server = Server::start_with(&[("streams", "max_topics = 2")]);
    let mut c = send(
        &server,
        "GET /events?topic=a&topic=b&topic=c HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    expect_plain(&mut c, 400);
    expect_closed(&mut c);
    expect_stream(
        &server,
        "GET /events?topic=a&topic=b HTTP/1.1\r\nHost: t\r\n\r\n",
    );
}

#[test]
fn malformed_requests_are_400_and_close() {
    let server = Server::start();
    for raw in [
        "hello world\r\n\r\n",
        "GET /healthz HTTP/1.1 extra\r\nHost: t\r\n\r\n",
        "GET /healthz\r\nHost: t\r\n\r\n",
        "GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n",
        "GET  /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "\x00\x01\x02\r\n\r\n",
    ] {
        let mut c = send(&server, raw);
        let (got, head, body) = c.read_response();
        assert_eq!(got, 400, "{raw:?}: {head:?} {body:?}");
        assert!(
            body.ends_with('\n') && body.matches('\n').count() == 1,
            "{body:?}"
        );
        expect_closed(&mut c);
    }
}

#[test]
fn http11_without_host_is_400_and_closes() {
    let server = Server::start();
    for raw in [
        "GET /events?topic=a HTTP/1.1\r\n\r\n",
        "GET /healthz HTTP/1.1\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        let mut c = send(&server, raw);
        expect_plain(&mut c, 400);
        expect_closed(&mut c);
    }
}

#[test]
fn request_line_over_8k_is_414_and_closes() {
    let server = Server::start();
    let target = format!("/events?topic=a&pad={}", "p".repeat(9000));
    let mut c = send(
        &server,
        &format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"),
    );
    expect_plain(&mut c, 414);
    expect_closed(&mut c);
    // A far longer line (64 KiB, more than the server reads) still gets its answer, not a
    // reset that loses it.
    let target = format!("/events?topic=a&pad={}", "p".repeat(64 * 1024));
    let mut c = send(
        &server,
        &format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"),
    );
    expect_plain(&mut c, 414);
    expect_closed(&mut c);
}

#[test]
fn headers_over_8k_are_431_and_close() {
    let server = Server::start();
    let pad = "p".repeat(9000);
    let mut c = send(
        &server,
        &format!("GET /events?topic=a HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n"),
    );
    expect_plain(&mut c, 431);
    expect_closed(&mut c);
    // Many small headers adding up to more than 8 KiB.
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(250)));
    }
    many.push_str("\r\n");
    assert!(many.len() > 8192);
    let mut c = send(&server, &many);
    expect_plain(&mut c, 431);
    expect_closed(&mut c);
    // Just under the limit is fine.
    let mut ok = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    ok.push_str(&format!("X-Pad: {}\r\n\r\n", "p".repeat(7900)));
    assert!(ok.len() < 8192);
    let mut c = send(&server, &ok);
    let (status, _, body) = c.read_response();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn configured_max_header_bytes_is_honoured() {
    let server = Server::start_with(&[("http", "max_header_bytes = 1024")]);
    // Request line alone over the limit: 414.
    let mut c = send(
        &server,
        &format!(
            "GET /events?topic=a&pad={} HTTP/1.1\r\nHost: t\r\n\r\n",
            "p".repeat(1100)
        ),
    );
    expect_plain(&mut c, 414);
    expect_closed(&mut c);
    // Short request line, headers over the limit: 431.
    let mut c = send(
        &server,
        &format!(
            "GET /events?topic=a HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(1100)
        ),
    );
    expect_plain(&mut c, 431);
    expect_closed(&mut c);
    // A head that would be fine at the default limit but not here: 431 (2 KiB).
    let mut c = send(
        &server,
        &format!(
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(2000)
        ),
    );
    expect_plain(&mut c, 431);
    expect_closed(&mut c);
    // Under the limit: served.
    let mut c = send(
        &server,
        &format!(
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(900)
        ),
    );
    let (status, _, _) = c.read_response();
    assert_eq!(status, 200);
    expect_stream(
        &server,
        &format!(
            "GET /events?topic=a HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(900)
        ),
    );
}

#[test]
fn head_returns_the_stream_head_without_body_and_closes() {
    let server = Server::start();
    let mut c = send(&server, "HEAD /events?topic=a HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
    assert_eq!(
        header_value(&head, "content-type").as_deref(),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(
        header_value(&head, "cache-control").as_deref(),
        Some("no-cache, no-transform")
    );
    assert_eq!(header_value(&head, "connection").as_deref(), Some("close"));
    assert_eq!(header_value(&head, "content-length"), None);
    assert_eq!(header_value(&head, "transfer-encoding"), None);
    // Publishing now must not reach the HEAD connection.
    server.producer().publish("a", "not for HEAD");
    expect_closed(&mut c);
    // HEAD runs the same checks as GET.
    let mut c = send(&server, "HEAD /events HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 400 "), "{head:?}");
    expect_closed(&mut c);
}

#[test]
fn options_is_204_with_allow() {
    let server = Server::start();
    for target in ["/events", "/events?topic=a"] {
        let mut c = send(
            &server,
            &format!("OPTIONS {target} HTTP/1.1\r\nHost: t\r\n\r\n"),
        );
        let (status, head, body) = c.read_response();
        assert_eq!(status, 204, "{head:?}");
        assert!(body.is_empty());
        assert_eq!(
            header_value(&head, "allow").as_deref(),
            Some("GET, HEAD, OPTIONS"),
            "{head:?}"
        );
        assert_eq!(header_value(&head, "content-length"), None, "{head:?}");
        expect_open(&mut c);
    }
}

/// The server-wide `OPTIONS *` (RFC 9110 9.3.7) says what the server supports; it was 404.
#[test]
fn options_asterisk_is_204_with_allow() {
    let server = Server::start();
    for request in [
        "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
        "OPTIONS * HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ] {
        let mut c = send(&server, request);
        let (status, head, body) = c.read_response();
        assert_eq!(status, 204, "{request:?}: {head:?}");
        assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"), "{head:?}");
        assert!(body.is_empty(), "{body:?}");
        assert_eq!(
            header_value(&head, "allow").as_deref(),
            Some("GET, HEAD, OPTIONS"),
            "{head:?}"
        );
        assert_eq!(header_value(&head, "content-length"), None, "{head:?}");
        expect_open(&mut c);
    }
    // Only OPTIONS may use the asterisk form.
    let mut c = send(&server, "GET * HTTP/1.1\r\nHost: t\r\n\r\n");
    let (_, body) = expect_plain(&mut c, 400);
    assert_eq!(body, "asterisk-form target is only allowed with OPTIONS\n");
    expect_closed(&mut c);
}

/// A `Last-Event-ID` header that is not UTF-8 is refused like the same value in the
/// `lastEventId` parameter (it used to be taken as absent: a fresh stream, no `reset`).
#[test]
fn non_utf8_last_event_id_header_is_400_and_closes() {
    use std::io::Write;
    let server = Server::start();
    for bad in [&b"\xff"[..], b"12\xc3\x28", b"\xed\xa0\x80"] {
        let mut c = Client::connect(server.addr);
        let mut raw = b"GET /events?topic=a HTTP/1.1\r\nHost: t\r\nLast-Event-ID: ".to_vec();
        raw.extend_from_slice(bad);
        raw.extend_from_slice(b"\r\n\r\n");
        c.sock.write_all(&raw).expect("send");
        let (head, body) = expect_plain(&mut c, 400);
        assert_eq!(body, "Last-Event-ID is not valid UTF-8\n", "{bad:?}");
        assert_eq!(header_value(&head, "connection").as_deref(), Some("close"));
        expect_closed(&mut c);
    }
    // The query parameter gives the same reason.
    let mut c = send(
        &server,
        "GET /events?topic=a&lastEventId=%FF HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let (_, body) = expect_plain(&mut c, 400);
    assert_eq!(body, "lastEventId is not valid UTF-8\n");
    // A UTF-8 one still resumes (here: an id never issued, so `reset`).
    let mut c = server.resume("topic=a", "not-an-id");
    let reset = c.read_event();
    assert!(reset.starts_with("event: reset\n"), "{reset:?}");
}

#[test]
fn healthz_is_200_ok() {
    let server = Server::start();
    let mut c = send(&server, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let (head, body) = expect_plain(&mut c, 200);
    assert_eq!(body, "ok\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
    expect_open(&mut c);
    // HEAD /healthz: same head, no body, still open.
    c.send("HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
    expect_open(&mut c);
}

#[test]
fn http10_stream_works_without_host() {
    let server = Server::start();
    let mut c = expect_stream(&server, "GET /events?topic=old HTTP/1.0\r\n\r\n");
    let id = server.producer().publish("old", "for 1.0");
    assert_eq!(c.read_event(), format!("id: {id}\ndata: for 1.0\n\n"));
    // An HTTP/1.0 plain answer is closed unless keep-alive was asked for.
    let mut c = send(&server, "GET /healthz HTTP/1.0\r\n\r\n");
    expect_plain(&mut c, 200);
    expect_closed(&mut c);
}

#[test]
fn absolute_form_target_streams() {
    let server = Server::start();
    let mut c = expect_stream(
        &server,
        "GET http://x/events?topic=abs HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let id = server.producer().publish("abs", "absolute");
    assert_eq!(c.read_event(), format!("id: {id}\ndata: absolute\n\n"));
}

#[test]
fn request_with_body_is_answered_then_closed() {
    let server = Server::start();
    let mut c = send(
        &server,
        "GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    );
    let (head, body) = expect_plain(&mut c, 200);
    assert_eq!(body, "ok\n");
    assert_eq!(
        header_value(&head, "connection").as_deref(),
        Some("close"),
        "{head:?}"
    );
    expect_closed(&mut c);
    let mut c = send(
        &server,
        "POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    );
    expect_plain(&mut c, 404);
    expect_closed(&mut c);
}

/// Request smuggling (issue 14): only `POST /publish` reads a body. A request with both a
/// Content-Length and a Transfer-Encoding, a body on /events, or a body on any other path
/// is refused (or answered) and the connection closed; what follows is never read as a
/// second request.
#[test]
fn bodies_that_could_smuggle_a_request_are_refused_and_close() {
    let server = Server::start();
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    for (head, status, reason) in [
        (
            "GET /events?topic=a HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "both Content-Length and Transfer-Encoding: refused\n",
        ),
        (
            "POST /nope HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            404,
            "not found\n",
        ),
        (
            "POST /events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
            "the only Transfer-Encoding taken is chunked (alone)\n",
        ),
        (
            "GET /events?topic=a HTTP/1.1\r\nHost: t\r\nContent-Length: 39\r\n\r\n",
            400,
            "a request to /events may not carry a body\n",
        ),
    ] {
        let mut c = send(&server, &format!("{head}{smuggled}"));
        let (_, body) = expect_plain(&mut c, status);
        assert_eq!(body, reason, "{head:?}");
        expect_closed(&mut c);
    }
}

#[test]
fn pipelined_requests_get_answers_in_order() {
    let server = Server::start();
    let mut c = send(
        &server,
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    for _ in 0..2 {
        let (status, _, body) = c.read_response();
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
    expect_open(&mut c);
    // Distinguishable answers, in order, and a stream request at the end of the pipeline.
    let mut c = send(
        &server,
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n\
         OPTIONS /events HTTP/1.1\r\nHost: t\r\n\r\nGET /events?topic=pipe HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(c.read_response().0, 200);
    assert_eq!(c.read_response().0, 404);
    assert_eq!(c.read_response().0, 204);
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
    assert!(c.read_line().starts_with("retry: "));
    let id = server.producer().publish("pipe", "piped");
    assert_eq!(c.read_event(), format!("id: {id}\ndata: piped\n\n"));
}

#[test]
fn pipelined_requests_larger_than_one_read_are_all_answered() {
    // Four requests of ~3 KiB each in one write: more than the server reads at once.
    let server = Server::start();
    let one = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(3000)
    );
    let mut c = send(&server, &one.repeat(4));
    for i in 0..4 {
        let (status, _, body) = c.read_response();
        assert_eq!((status, body.as_str()), (200, "ok\n"), "answer {i}");
    }
    expect_open(&mut c);
}
