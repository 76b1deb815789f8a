//! HTTP/1.1 request heads (parsed with `httparse`) and the stream endpoint's query string.
//! Pure code: bytes in, a parsed [`Request`] / [`StreamQuery`] or a rejection out; never any I/O.
//! Every rejection is a status plus a one-line reason; the caller answers it and closes.

pub use crate::http::body::Framing;
use crate::topic_name;

/// Size of the fixed `httparse` header array: one more header is a 431.
const MAX_HEADERS: usize = 64;

/// The request methods the server tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Options,
    Post,
    Other,
}

/// A refused request head: answer `status` with `reason` (one line), then close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: &'static str,
}

/// A parsed request head, reduced to what the server needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// Raw (not percent-decoded) path without the query, e.g. "/events"; "*" for `OPTIONS *`.
    pub path: String,
    /// Raw query without the '?', "" if none.
    pub query: String,
    /// The request line said HTTP/1.0.
    pub http10: bool,
    pub keep_alive: bool,
    /// `Content-Length` > 0 or `Transfer-Encoding: chunked`. Only `POST /publish` reads a
    /// body; every other request with one is answered and closed.
    pub has_body: bool,
    /// Neither `Content-Length` nor `Transfer-Encoding`: `Length(0)` (RFC 9112 6.3).
    pub framing: Framing,
    /// `Content-Type`; None when absent or not UTF-8.
    pub content_type: Option<String>,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `Last-Event-ID`; None when absent or empty (the last such header wins). Not UTF-8
    /// is a 400, as for the `lastEventId` parameter.
    pub last_event_id: Option<String>,
    /// `Origin`; None when absent or not UTF-8.
    pub origin: Option<String>,
    /// `Authorization`; None when absent or not UTF-8.
    pub authorization: Option<String>,
    /// All non-empty UTF-8 `Cookie` headers joined with "; ".
    pub cookie: Option<String>,
    /// All non-empty UTF-8 `X-Forwarded-For` headers joined with ", ".
    pub forwarded_for: Option<String>,
}

/// The outcome of [`parse`] on the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed (the buffer is still within the limit).
    Partial,
    /// A complete head of `head_len` bytes (bytes after it belong to the body or the next request).
    Complete { request: Request, head_len: usize },
    /// Answer with this status and a one-line reason, then close the connection.
    Reject(Reject),
}

const fn reject(status: u16, reason: &'static str) -> Reject {
    Reject { status, reason }
}

const URI_TOO_LONG: Reject = reject(414, "request line too long");
const HEADERS_TOO_LARGE: Reject = reject(431, "request header fields too large");

/// Parses the request head at the start of `buf`.
///
/// Only the first `max_header_bytes` bytes are looked at: a head must end within them. When
/// `buf` holds more than that and no head ends there, the answer is 414 if the request line
/// has no `\n` within the limit, else 431.
pub fn parse(buf: &[u8], max_header_bytes: usize) -> Parsed {
    let window = buf.get(..max_header_bytes).unwrap_or(buf);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(window) {
        Ok(httparse::Status::Complete(head_len)) => match build(&req) {
            Ok(request) => Parsed::Complete { request, head_len },
            Err(r) => Parsed::Reject(r),
        },
        Ok(httparse::Status::Partial) if buf.len() > max_header_bytes => {
            if request_line_ends_within(window) {
                Parsed::Reject(HEADERS_TOO_LARGE)
            } else {
                Parsed::Reject(URI_TOO_LONG)
            }
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(e) => Parsed::Reject(httparse_reject(e)),
    }
}

fn httparse_reject(e: httparse::Error) -> Reject {
    use httparse::Error as E;
    match e {
        E::TooManyHeaders => reject(431, "too many header fields"),
        E::HeaderName => reject(400, "malformed request: invalid header name"),
        E::HeaderValue => reject(400, "malformed request: invalid header value"),
        E::NewLine => reject(400, "malformed request: invalid new line"),
        E::Token => reject(400, "malformed request: invalid token"),
        E::Version => reject(400, "malformed request: invalid HTTP version"),
        E::Status => reject(400, "malformed request"),
    }
}

/// Whether `window` holds the `\n` that ends the request line. Empty lines before the request
/// line are skipped first, as `httparse` does.
fn request_line_ends_within(window: &[u8]) -> bool {
    let mut rest = window;
    loop {
        rest = match rest {
            [b'\n', tail @ ..] | [b'\r', b'\n', tail @ ..] => tail,
            _ => break,
        };
    }
    rest.contains(&b'\n')
}

/// Turns a complete `httparse` request into a [`Request`], or a 400.
fn build(req: &httparse::Request<'_, '_>) -> Result<Request, Reject> {
    let malformed = reject(400, "malformed request");
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(malformed);
    };
    let http10 = match version {
        0 => true,
        1 => false,
        _ => return Err(reject(400, "malformed request: invalid HTTP version")),
    };
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        "POST" => Method::Post,
        _ => Method::Other,
    };
    let (path, query) = split_target(method, target)?;

    let mut hosts = 0usize;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut content_length: Option<u64> = None;
    let mut last_event_id: Option<String> = None;
    let mut origin: Option<String> = None;
    let mut origins = 0usize;
    let mut authorization: Option<String> = None;
    let mut authorizations = 0usize;
    let mut cookies: Vec<&str> = Vec::new();
    let mut forwarded: Vec<&str> = Vec::new();
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut content_type: Option<String> = None;
    let mut content_types = 0usize;
    let mut expect_continue = false;

    for h in req.headers.iter() {
        let name = h.name;
        let value = h.value;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(trim_ows) {
                if token.eq_ignore_ascii_case(b"close") {
                    conn_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            for item in value.split(|&b| b == b',').map(trim_ows) {
                let n = parse_decimal(item).ok_or(reject(400, "malformed Content-Length"))?;
                match content_length {
                    Some(prev) if prev != n => {
                        return Err(reject(400, "conflicting Content-Length values"));
                    }
                    _ => content_length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.extend(
                value
                    .split(|&b| b == b',')
                    .map(trim_ows)
                    .filter(|c| !c.is_empty()),
            );
            if codings.is_empty() {
                return Err(reject(400, "empty Transfer-Encoding"));
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            content_types += 1;
            content_type = std::str::from_utf8(value).ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("expect") {
            if !trim_ows(value).eq_ignore_ascii_case(b"100-continue") {
                return Err(reject(417, "the only Expect taken is 100-continue"));
            }
            expect_continue = true;
        } else if name.eq_ignore_ascii_case("last-event-id") {
            // Refused like the `lastEventId` parameter; an EventSource only ever sends
            // back an id it received, which is UTF-8.
            let id = std::str::from_utf8(value)
                .map_err(|_| reject(400, "Last-Event-ID is not valid UTF-8"))?;
            last_event_id = (!id.is_empty()).then(|| id.to_owned());
        } else if name.eq_ignore_ascii_case("origin") {
            origins += 1;
            origin = std::str::from_utf8(value).ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("authorization") {
            authorizations += 1;
            authorization = std::str::from_utf8(value).ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("cookie") {
            cookies.extend(std::str::from_utf8(value).ok().filter(|v| !v.is_empty()));
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded.extend(std::str::from_utf8(value).ok().filter(|v| !v.is_empty()));
        }
    }

    if hosts > 1 {
        return Err(reject(400, "more than one Host header"));
    }
    if hosts == 0 && !http10 {
        return Err(reject(400, "missing Host header"));
    }
    if origins > 1 {
        return Err(reject(400, "more than one Origin header"));
    }
    if authorizations > 1 {
        return Err(reject(400, "more than one Authorization header"));
    }
    if content_types > 1 {
        return Err(reject(400, "more than one Content-Type header"));
    }
    // Request smuggling (RFC 9112 6.1, 6.3): a length and a coding together, a coding from
    // an HTTP/1.0 client, or a coding other than a single `chunked` is refused, never
    // guessed at, so no proxy in front can frame the body differently.
    let framing = match (content_length, codings.as_slice()) {
        (_, []) => Framing::Length(content_length.unwrap_or(0)),
        (Some(_), _) => {
            return Err(reject(
                400,
                "both Content-Length and Transfer-Encoding: refused",
            ));
        }
        (None, _) if http10 => {
            return Err(reject(400, "Transfer-Encoding in an HTTP/1.0 request"));
        }
        (None, [one]) if one.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        (None, _) => {
            return Err(reject(
                501,
                "the only Transfer-Encoding taken is chunked (alone)",
            ));
        }
    };

    let keep_alive = if http10 {
        conn_keep_alive && !conn_close
    } else {
        !conn_close
    };
    let has_body = match framing {
        Framing::Length(n) => n > 0,
        Framing::Chunked => true,
    };

    Ok(Request {
        method,
        path,
        query,
        http10,
        keep_alive,
        has_body,
        framing,
        content_type,
        expect_continue,
        last_event_id,
        origin,
        authorization,
        cookie: join_non_empty(&cookies, "; "),
        forwarded_for: join_non_empty(&forwarded, ", "),
    })
}

/// Splits a request target into (raw path, raw query). Accepts origin-form, absolute-form
/// (`http://` / `https://`, scheme case-insensitive, no userinfo) and `*` for OPTIONS only.
fn split_target(method: Method, target: &str) -> Result<(String, String), Reject> {
    let bad_target = reject(400, "malformed request target");
    if target == "*" {
        return if method == Method::Options {
            Ok(("*".to_owned(), String::new()))
        } else {
            Err(reject(
                400,
                "asterisk-form target is only allowed with OPTIONS",
            ))
        };
    }
    if target.contains('#') {
        return Err(bad_target);
    }
    let path_and_query = if target.starts_with('/') {
        target
    } else {
        let after_scheme = strip_prefix_ignore_case(target, "http://")
            .or_else(|| strip_prefix_ignore_case(target, "https://"))
            .ok_or(bad_target)?;
        let authority_end = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
        let (authority, rest) = after_scheme.split_at(authority_end);
        if authority.is_empty() || authority.contains('@') {
            return Err(bad_target);
        }
        rest
    };
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let path = if path.is_empty() { "/" } else { path };
    Ok((path.to_owned(), query.to_owned()))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Trims optional whitespace (SP / HTAB) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// 1*DIGIT as a u64; None when empty, not all digits, or overflowing.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

fn join_non_empty(parts: &[&str], sep: &str) -> Option<String> {
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(sep))
    }
}

/// The stream endpoint's parameters.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamQuery {
    /// Distinct, validated, first-seen order, 1..=max_topics.
    pub topics: Vec<Box<str>>,
    /// From the `lastEventId` parameter (the last one wins; empty means absent).
    pub last_event_id: Option<String>,
    /// From the `token` parameter (the last one wins; empty means absent).
    pub token: Option<String>,
}

/// Parses the raw query of a stream request (`topic=..&topic=..&lastEventId=..&token=..`).
///
/// Keys and values are percent-decoded (`+` stays `+`) before matching; any bad escape
/// anywhere is an error. Unknown parameters and parameters without `=` are ignored, except a
/// bare `topic`, which counts as an empty topic name. Reasons are one line; status is always
/// 400 here. Since some reasons include details (e.g. the max topic count), return an owned
/// String reason.
pub fn parse_stream_query(query: &str, max_topics: usize) -> Result<StreamQuery, String> {
    let bad_escape = || "bad percent-encoding in query".to_owned();
    let mut topics: Vec<Box<str>> = Vec::new();
    let mut last_event_id = None;
    let mut token = None;

    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        let key = percent_decode(raw_key).ok_or_else(bad_escape)?;
        let value = match raw_value {
            Some(v) => Some(percent_decode(v).ok_or_else(bad_escape)?),
            None => None,
        };
        match (key.as_slice(), value) {
            (b"topic", value) => {
                let name = value.unwrap_or_default();
                topic_name::validate(&name).map_err(|why| format!("bad topic: {why}"))?;
                // Valid topic names are ASCII, so this cannot fail; no panic either way.
                let name =
                    String::from_utf8(name).map_err(|_| "bad topic: not UTF-8".to_owned())?;
                if !topics.iter().any(|t| **t == *name) {
                    if topics.len() >= max_topics {
                        return Err(format!("too many topics (max {max_topics})"));
                    }
                    topics.push(name.into_boxed_str());
                }
            }
            (b"lastEventId", Some(value)) => last_event_id = non_empty_utf8(value, "lastEventId")?,
            (b"token", Some(value)) => token = non_empty_utf8(value, "token")?,
            _ => {}
        }
    }

    if topics.is_empty() {
        return Err("missing topic parameter".to_owned());
    }
    Ok(StreamQuery {
        topics,
        last_event_id,
        token,
    })
}

fn non_empty_utf8(value: Vec<u8>, what: &str) -> Result<Option<String>, String> {
    let s = String::from_utf8(value).map_err(|_| format!("{what} is not valid UTF-8"))?;
    Ok(if s.is_empty() { None } else { Some(s) })
}

/// Percent-decodes `s`; None on a malformed escape. Decoded bytes may be any bytes (callers validate).
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = hex_value(bytes.next()?)?;
            let lo = hex_value(bytes.next()?)?;
            out.push((hi << 4) | lo);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse(buf, MAX) {
            Parsed::Complete { request, head_len } => (request, head_len),
            other => panic!(
                "expected Complete for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn req(buf: &[u8]) -> Request {
        complete(buf).0
    }

    fn status(buf: &[u8], max: usize) -> u16 {
        match parse(buf, max) {
            Parsed::Reject(r) => r.status,
            other => panic!(
                "expected Reject for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn rejected(buf: &[u8]) -> Reject {
        match parse(buf, MAX) {
            Parsed::Reject(r) => r,
            other => panic!(
                "expected Reject for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    const GET: &[u8] = b"GET /events?topic=a HTTP/1.1\r\nHost: hub.example\r\n\r\n";

    #[test]
    fn simple_get() {
        let (r, len) = complete(GET);
        assert_eq!(len, GET.len());
        assert_eq!(
            r,
            Request {
                method: Method::Get,
                path: "/events".into(),
                query: "topic=a".into(),
                http10: false,
                keep_alive: true,
                has_body: false,
                framing: Framing::Length(0),
                content_type: None,
                expect_continue: false,
                last_event_id: None,
                origin: None,
                authorization: None,
                cookie: None,
                forwarded_for: None,
            }
        );
    }

    #[test]
    fn byte_at_a_time_then_pipelined_rest() {
        let second = b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut both = GET.to_vec();
        both.extend_from_slice(second);
        for n in 0..GET.len() {
            assert_eq!(
                parse(&both[..n], MAX),
                Parsed::Partial,
                "prefix of {n} bytes"
            );
        }
        for n in GET.len()..=both.len() {
            let (r, len) = complete(&both[..n]);
            assert_eq!(len, GET.len(), "prefix of {n} bytes");
            assert_eq!(r.method, Method::Get);
        }
        let rest = &both[GET.len()..];
        assert_eq!(rest, second);
        let (r2, len2) = complete(rest);
        assert_eq!(
            (r2.method, r2.path.as_str(), len2),
            (Method::Head, "/health", second.len())
        );
    }

    #[test]
    fn bare_lf_and_leading_empty_lines() {
        let (r, len) = complete(b"\r\nGET /x HTTP/1.1\nHost: a\n\n");
        assert_eq!((r.path.as_str(), len), ("/x", 27));
    }

    #[test]
    fn methods() {
        let m = |line: &str| req(format!("{line} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).method;
        assert_eq!(m("GET /"), Method::Get);
        assert_eq!(m("HEAD /"), Method::Head);
        assert_eq!(m("OPTIONS /events"), Method::Options);
        assert_eq!(m("POST /"), Method::Post);
        assert_eq!(m("DELETE /"), Method::Other);
        assert_eq!(m("get /"), Method::Other, "methods are case-sensitive");
    }

    #[test]
    fn absolute_form_target() {
        let r = req(b"GET http://hub.example:8080/events?topic=a&topic=b HTTP/1.1\r\nHost: hub.example:8080\r\n\r\n");
        assert_eq!(
            (r.path.as_str(), r.query.as_str()),
            ("/events", "topic=a&topic=b")
        );
        let r = req(b"GET HTTPS://hub.example/events HTTP/1.1\r\nHost: hub.example\r\n\r\n");
        assert_eq!((r.path.as_str(), r.query.as_str()), ("/events", ""));
        let r = req(b"GET http://hub.example HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((r.path.as_str(), r.query.as_str()), ("/", ""));
        let r = req(b"GET http://hub.example?topic=z HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((r.path.as_str(), r.query.as_str()), ("/", "topic=z"));
        for bad in [
            "ftp://hub/events",
            "http:///events",
            "http://user@hub/events",
            "hub.example:80",
            "events",
            "/events#frag",
        ] {
            let r = rejected(format!("GET {bad} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
            assert_eq!(r.status, 400, "{bad}");
        }
    }

    #[test]
    fn query_split_and_raw() {
        let r = req(b"GET /events?topic=a%3Ab&x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            (r.path.as_str(), r.query.as_str()),
            ("/events", "topic=a%3Ab&x=1")
        );
        let r = req(b"GET /events? HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((r.path.as_str(), r.query.as_str()), ("/events", ""));
        let r = req(b"GET /a%20b HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(r.path, "/a%20b", "path stays raw");
    }

    #[test]
    fn options_asterisk() {
        let r = req(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            (r.method, r.path.as_str(), r.query.as_str()),
            (Method::Options, "*", "")
        );
        assert_eq!(rejected(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n").status, 400);
    }

    #[test]
    fn host_rules() {
        let r = rejected(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            r,
            Reject {
                status: 400,
                reason: "missing Host header"
            }
        );
        let r = req(b"GET / HTTP/1.0\r\n\r\n");
        assert!(r.http10);
        assert_eq!(
            rejected(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n").status,
            400
        );
        assert_eq!(
            rejected(b"GET / HTTP/1.0\r\nHost: a\r\nHOST: a\r\n\r\n").status,
            400
        );
        // An empty Host is allowed by RFC 9112 when the target has no authority.
        assert!(!req(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").http10);
    }

    #[test]
    fn versions() {
        assert!(!req(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").http10);
        let r = rejected(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n");
        assert_eq!(
            r,
            Reject {
                status: 400,
                reason: "malformed request: invalid HTTP version"
            }
        );
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |v: &str, hdrs: &str| {
            req(format!("GET / HTTP/{v}\r\nHost: a\r\n{hdrs}\r\n").as_bytes()).keep_alive
        };
        assert!(ka("1.1", ""));
        assert!(!ka("1.1", "Connection: close\r\n"));
        assert!(!ka("1.1", "Connection: Upgrade, CLOSE\r\n"));
        assert!(!ka("1.1", "Connection: upgrade\r\nconnection: Close\r\n"));
        assert!(ka("1.1", "Connection: keep-alive, Upgrade\r\n"));
        assert!(
            ka("1.1", "Connection: closed\r\n"),
            "only the whole token counts"
        );
        assert!(!ka("1.0", ""));
        assert!(ka("1.0", "Connection: Keep-Alive\r\n"));
        assert!(ka("1.0", "Connection: keep-alive, Upgrade\r\n"));
        assert!(!ka("1.0", "Connection: keep-alive, close\r\n"));
        assert!(!ka("1.0", "Connection: Upgrade\r\n"));
    }

    #[test]
    fn body_detection() {
        let body = |hdrs: &str| {
            parse(
                format!("POST / HTTP/1.1\r\nHost: a\r\n{hdrs}\r\n").as_bytes(),
                MAX,
            )
        };
        let has_body = |hdrs: &str| match body(hdrs) {
            Parsed::Complete { request, .. } => request.has_body,
            other => panic!("{hdrs:?}: {other:?}"),
        };
        let status = |hdrs: &str| match body(hdrs) {
            Parsed::Reject(r) => r.status,
            other => panic!("{hdrs:?}: {other:?}"),
        };
        assert!(!has_body(""));
        assert!(!has_body("Content-Length: 0\r\n"));
        assert!(has_body("Content-Length: 5\r\n"));
        assert!(has_body("content-length: 5\r\nContent-Length: 5\r\n"));
        assert!(has_body("Content-Length: 5, 5\r\n"));
        let framing = |hdrs: &str| match body(hdrs) {
            Parsed::Complete { request, .. } => request.framing,
            other => panic!("{hdrs:?}: {other:?}"),
        };
        assert_eq!(framing(""), Framing::Length(0));
        assert_eq!(framing("Content-Length: 7\r\n"), Framing::Length(7));
        assert!(has_body("Transfer-Encoding: chunked\r\n"));
        assert_eq!(framing("Transfer-Encoding: Chunked\r\n"), Framing::Chunked);
        assert_eq!(framing("Transfer-Encoding: chunked \r\n"), Framing::Chunked);
        // A length and a coding together is the classic smuggling shape: refused.
        for te in [
            "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding:\r\n",
        ] {
            assert_eq!(status(te), 400, "{te:?}");
        }
        // Codings other than one `chunked` are not taken.
        for te in [
            "transfer-encoding: gzip\r\n",
            "Transfer-Encoding: identity\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: xchunked\r\n",
        ] {
            assert_eq!(status(te), 501, "{te:?}");
        }
        let http10 = parse(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            MAX,
        );
        assert!(matches!(http10, Parsed::Reject(r) if r.status == 400));
        // Expect: only 100-continue.
        let expect = |hdrs: &str| match body(hdrs) {
            Parsed::Complete { request, .. } => request.expect_continue,
            other => panic!("{hdrs:?}: {other:?}"),
        };
        assert!(!expect(""));
        assert!(expect("Expect: 100-Continue\r\n"));
        assert_eq!(status("Expect: 200-ok\r\n"), 417);
        assert_eq!(status("Content-Type: a\r\nContent-Type: b\r\n"), 400);
        match body("Content-Type: application/x-ndjson\r\n") {
            Parsed::Complete { request, .. } => {
                assert_eq!(
                    request.content_type.as_deref(),
                    Some("application/x-ndjson")
                );
                assert_eq!(request.method, Method::Post);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(status("Content-Length: abc\r\n"), 400);
        assert_eq!(status("Content-Length: -1\r\n"), 400);
        assert_eq!(status("Content-Length: +5\r\n"), 400);
        assert_eq!(status("Content-Length:\r\n"), 400);
        assert_eq!(status("Content-Length: 99999999999999999999999\r\n"), 400);
        assert_eq!(status("Content-Length: 5\r\nContent-Length: 6\r\n"), 400);
        assert_eq!(status("Content-Length: 5, 6\r\n"), 400);
        assert_eq!(status("Content-Length: 0\r\nContent-Length: 5\r\n"), 400);
    }

    /// A head of exactly `len` bytes, padded with an X-Pad header.
    fn head_of_len(len: usize) -> Vec<u8> {
        let base = b"GET /events HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n".len();
        assert!(len > base);
        let pad = "p".repeat(len - base);
        let v = format!("GET /events HTTP/1.1\r\nHost: a\r\nX-Pad: {pad}\r\n\r\n").into_bytes();
        assert_eq!(v.len(), len);
        v
    }

    #[test]
    fn size_limit_boundaries() {
        let max = 256;
        // Exactly max bytes: accepted, even with pipelined bytes after it.
        let mut head = head_of_len(max);
        match parse(&head, max) {
            Parsed::Complete { head_len, .. } => assert_eq!(head_len, max),
            other => panic!("{other:?}"),
        }
        head.extend_from_slice(GET);
        match parse(&head, max) {
            Parsed::Complete { head_len, .. } => assert_eq!(head_len, max),
            other => panic!("{other:?}"),
        }
        // max + 1 bytes: the first max bytes are only a partial head; one more byte is 431.
        let long = head_of_len(max + 1);
        assert_eq!(parse(&long[..max], max), Parsed::Partial);
        assert_eq!(parse(&long, max), Parsed::Reject(HEADERS_TOO_LARGE));
        // Same at the default limit.
        assert!(matches!(
            parse(&head_of_len(MAX), MAX),
            Parsed::Complete { head_len: MAX, .. }
        ));
        assert_eq!(status(&head_of_len(MAX + 1), MAX), 431);
    }

    #[test]
    fn uri_too_long_vs_headers_too_large() {
        let max = 256;
        // A request line whose '\n' is the last byte within the limit: 431 once we exceed it.
        let line = |len: usize| {
            let base = "GET / HTTP/1.1\r\n".len();
            format!("GET /{} HTTP/1.1\r\n", "a".repeat(len - base)).into_bytes()
        };
        let mut buf = line(max);
        assert_eq!(buf.len(), max);
        assert_eq!(parse(&buf, max), Parsed::Partial);
        buf.push(b'H');
        assert_eq!(parse(&buf, max), Parsed::Reject(HEADERS_TOO_LARGE));
        // One byte longer: the '\n' is just past the limit, so 414.
        let buf = line(max + 1);
        assert_eq!(parse(&buf[..max], max), Parsed::Partial);
        assert_eq!(parse(&buf, max), Parsed::Reject(URI_TOO_LONG));
        // No newline at all.
        let mut buf = b"GET /".to_vec();
        buf.resize(max + 1, b'a');
        assert_eq!(parse(&buf, max), Parsed::Reject(URI_TOO_LONG));
        // Leading empty lines do not count as the end of the request line.
        let mut buf = b"\r\n\r\nGET /".to_vec();
        buf.resize(max + 1, b'a');
        assert_eq!(parse(&buf, max), Parsed::Reject(URI_TOO_LONG));
        let mut buf = b"\n\r\n\nGET /".to_vec();
        buf.resize(max + 1, b'a');
        assert_eq!(parse(&buf, max), Parsed::Reject(URI_TOO_LONG));
        // A huge buffer whose head ends early is fine.
        let mut buf = GET.to_vec();
        buf.resize(10 * max, b'z');
        assert!(
            matches!(parse(&buf, max), Parsed::Complete { head_len, .. } if head_len == GET.len())
        );
    }

    #[test]
    fn too_many_headers() {
        let with = |n: usize| {
            let mut s = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
            for i in 1..n {
                s.push_str(&format!("X-H{i}: v\r\n"));
            }
            s.push_str("\r\n");
            s.into_bytes()
        };
        assert!(matches!(parse(&with(64), MAX), Parsed::Complete { .. }));
        assert_eq!(status(&with(65), MAX), 431);
        assert_eq!(status(&with(200), MAX), 431);
    }

    #[test]
    fn garbage_is_400() {
        for g in [
            &b"\x00\xff\xfe\x01\r\n\r\n"[..],
            b"\x00",
            b"\xff\xff\xff",
            b"GET\x00/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\rX",
            b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n",
            b" GET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
        ] {
            assert_eq!(status(g, MAX), 400, "{:?}", String::from_utf8_lossy(g));
        }
        assert_eq!(
            rejected(b"G(T / HTTP/1.1\r\n\r\n").reason,
            "malformed request: invalid token"
        );
    }

    #[test]
    fn header_lookups_case_insensitive() {
        let r = req(b"GET /events HTTP/1.1\r\nhost: a\r\nLAST-EVENT-ID: 42\r\norigin: https://app.example\r\n\
AuThOrIzAtIoN: Bearer abc\r\nCOOKIE: sid=1\r\nx-forwarded-for: 10.0.0.1\r\n\r\n");
        assert_eq!(r.last_event_id.as_deref(), Some("42"));
        assert_eq!(r.origin.as_deref(), Some("https://app.example"));
        assert_eq!(r.authorization.as_deref(), Some("Bearer abc"));
        assert_eq!(r.cookie.as_deref(), Some("sid=1"));
        assert_eq!(r.forwarded_for.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn repeated_cookie_and_forwarded_for_are_joined() {
        let r = req(
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nX-Forwarded-For: 1.1.1.1\r\n\
Cookie: b=2; c=3\r\nCookie:\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\n\r\n",
        );
        assert_eq!(r.cookie.as_deref(), Some("a=1; b=2; c=3"));
        assert_eq!(
            r.forwarded_for.as_deref(),
            Some("1.1.1.1, 2.2.2.2, 3.3.3.3")
        );
    }

    #[test]
    fn last_event_id_rules() {
        assert_eq!(
            req(b"GET / HTTP/1.1\r\nHost: a\r\nLast-Event-ID:\r\n\r\n").last_event_id,
            None
        );
        assert_eq!(
            req(b"GET / HTTP/1.1\r\nHost: a\r\nLast-Event-ID:   \r\n\r\n").last_event_id,
            None
        );
        assert_eq!(
            rejected(b"GET / HTTP/1.1\r\nHost: a\r\nLast-Event-ID: \xff\r\n\r\n"),
            reject(400, "Last-Event-ID is not valid UTF-8"),
            "not UTF-8 is refused, as in the query"
        );
        assert_eq!(
            rejected(
                b"GET / HTTP/1.1\r\nHost: a\r\nLast-Event-ID: \xc3\x28\r\nLast-Event-ID: 5\r\n\r\n"
            )
            .reason,
            "Last-Event-ID is not valid UTF-8",
            "even when a later header is valid"
        );
        let r = req(b"GET / HTTP/1.1\r\nHost: a\r\nLast-Event-ID:  7-3 \r\n\r\n");
        assert_eq!(
            r.last_event_id.as_deref(),
            Some("7-3"),
            "surrounding whitespace trimmed"
        );
        let r = req(b"GET / HTTP/1.1\r\nHost: a\r\nLast-Event-ID: 1\r\nLast-Event-ID: 2\r\n\r\n");
        assert_eq!(r.last_event_id.as_deref(), Some("2"), "the last one wins");
    }

    #[test]
    fn non_utf8_values_are_absent_and_singletons_are_checked() {
        let r = req(
            b"GET / HTTP/1.1\r\nHost: a\r\nOrigin: \xc3\x28\r\nAuthorization: \xff\r\n\
Cookie: a=\xff\r\nCookie: b=2\r\n\r\n",
        );
        assert_eq!(r.origin, None);
        assert_eq!(r.authorization, None);
        assert_eq!(r.cookie.as_deref(), Some("b=2"));
        assert_eq!(
            rejected(b"GET / HTTP/1.1\r\nHost: a\r\nOrigin: x\r\nOrigin: y\r\n\r\n").status,
            400
        );
        assert_eq!(
            rejected(b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: x\r\nauthorization: x\r\n\r\n")
                .status,
            400
        );
    }

    // ---- query ----

    fn topics(q: &str) -> Vec<String> {
        match parse_stream_query(q, 32) {
            Ok(sq) => sq.topics.iter().map(|t| t.to_string()).collect(),
            Err(e) => panic!("{q:?}: {e}"),
        }
    }

    fn query_err(q: &str) -> String {
        match parse_stream_query(q, 32) {
            Ok(sq) => panic!("{q:?} accepted: {sq:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn query_topics() {
        assert_eq!(topics("topic=a"), ["a"]);
        assert_eq!(
            topics("topic=notifications%3A42&topic=prices%3aAAPL"),
            ["notifications:42", "prices:AAPL"]
        );
        assert_eq!(
            topics("topic=b&topic=a&topic=b&topic=a%3A1&topic=a"),
            ["b", "a", "a:1"]
        );
        assert_eq!(topics("%74opic=x"), ["x"], "keys are decoded too");
        assert_eq!(topics("topic=a&&x&topic=b&"), ["a", "b"]);
    }

    #[test]
    fn query_topic_count_limit() {
        let q = |n: usize| {
            (0..n)
                .map(|i| format!("topic=t{i}"))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert_eq!(
            parse_stream_query(&q(32), 32).map(|s| s.topics.len()),
            Ok(32)
        );
        assert_eq!(
            parse_stream_query(&q(33), 32),
            Err("too many topics (max 32)".to_owned())
        );
        assert_eq!(
            parse_stream_query(&q(5), 4),
            Err("too many topics (max 4)".to_owned())
        );
        // Duplicates do not count towards the limit.
        let dup = format!("{}&topic=t0&topic=t31", q(32));
        assert_eq!(parse_stream_query(&dup, 32).map(|s| s.topics.len()), Ok(32));
    }

    #[test]
    fn query_errors() {
        assert_eq!(query_err("topic=a%zz"), "bad percent-encoding in query");
        assert_eq!(query_err("topic=a%4"), "bad percent-encoding in query");
        assert_eq!(query_err("topic=a%"), "bad percent-encoding in query");
        assert_eq!(
            query_err("topic=a&other=%g0"),
            "bad percent-encoding in query"
        );
        assert!(query_err("topic=a+b").starts_with("bad topic: "));
        assert!(query_err("topic=a%20b").starts_with("bad topic: "));
        assert_eq!(query_err("topic="), "bad topic: empty topic name");
        assert_eq!(query_err("topic"), "bad topic: empty topic name");
        let long = format!("topic={}", "x".repeat(5000));
        let e = query_err(&long);
        assert!(e.starts_with("bad topic: ") && e.len() < 100, "{e}");
        assert_eq!(query_err(""), "missing topic parameter");
        assert_eq!(
            query_err("lastEventId=5&token=t"),
            "missing topic parameter"
        );
        assert_eq!(query_err("topics=a"), "missing topic parameter");
        assert_eq!(query_err("Topic=a"), "missing topic parameter");
        assert_eq!(
            query_err("topic=a&lastEventId=%ff"),
            "lastEventId is not valid UTF-8"
        );
    }

    #[test]
    fn query_last_event_id_and_token() {
        let sq = parse_stream_query(
            "topic=a&lastEventId=1&token=abc%2Bd&lastEventId=7%3A2&x=y",
            32,
        );
        assert_eq!(
            sq,
            Ok(StreamQuery {
                topics: vec!["a".into()],
                last_event_id: Some("7:2".into()),
                token: Some("abc+d".into()),
            })
        );
        let sq = parse_stream_query("lastEventId=&topic=a&token=", 32);
        assert_eq!(
            sq.as_ref().map(|s| (&s.last_event_id, &s.token)),
            Ok((&None, &None))
        );
        let sq = parse_stream_query("topic=a&lastEventId=5&lastEventId=", 32);
        assert_eq!(
            sq.map(|s| s.last_event_id),
            Ok(None),
            "the last one wins, empty is absent"
        );
        let sq = parse_stream_query("topic=a&lastEventId&token", 32);
        assert_eq!(sq.map(|s| (s.last_event_id, s.token)), Ok((None, None)));
        let sq = parse_stream_query("topic=a&token=a+b", 32);
        assert_eq!(
            sq.map(|s| s.token),
            Ok(Some("a+b".into())),
            "+ is not a space"
        );
    }

    #[test]
    fn percent_decode_cases() {
        assert_eq!(
            percent_decode("a%3Ab%3a%2B+%00%FF"),
            Some(b"a:b:++\x00\xff".to_vec())
        );
        assert_eq!(percent_decode(""), Some(vec![]));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%é"), None);
        assert_eq!(percent_decode("é"), Some("é".as_bytes().to_vec()));
    }

    // ---- no-panic brute force ----

    /// The crate's generator, seeded (`below` in usize for indexing).
    struct XorShift(crate::rng::Rng);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0.next_u64()
        }
        fn below(&mut self, n: usize) -> usize {
            self.0.below(n as u64) as usize
        }
    }

    fn check_parse(buf: &[u8], max: usize) {
        match parse(buf, max) {
            Parsed::Partial => assert!(buf.len() <= max),
            Parsed::Complete { head_len, .. } => assert!(head_len <= buf.len() && head_len <= max),
            Parsed::Reject(r) => {
                assert!(matches!(r.status, 400 | 414 | 417 | 431 | 501), "{r:?}");
                assert!(!r.reason.contains('\n'));
            }
        }
    }

    fn check_query(q: &str) {
        match parse_stream_query(q, 4) {
            Ok(sq) => assert!((1..=4).contains(&sq.topics.len())),
            Err(e) => assert!(!e.contains('\n') && e.len() < 100, "{e}"),
        }
    }

    #[test]
    fn no_panic_brute_force() {
        let fixtures: [&[u8]; 5] = [
            GET,
            b"GET http://h:1/events?topic=a%3Ab&lastEventId=3&token=x HTTP/1.1\r\nHost: h\r\nCookie: a\r\nCookie: b\r\n\r\n",
            b"OPTIONS * HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
            b"\r\nPOST /x HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nLast-Event-ID: 9\n\n",
            b"GET /events?topic=%zz&topic&&=&%=%% HTTP/1.1\r\nHost: a\r\nOrigin: o\r\n\r\n",
        ];
        for f in fixtures {
            for n in 0..=f.len() {
                for max in [0, 1, 16, 64, MAX] {
                    check_parse(&f[..n], max);
                }
            }
        }
        let alphabet: &[u8] = b"GETHOPSgetho /?&=%:+*#@,\r\n\t\x00\xff\xc3\xa9019aAfFzZtopic";
        let words: [&[u8]; 12] = [
            b"GET ",
            b"OPTIONS ",
            b" HTTP/1.1\r\n",
            b" HTTP/1.0\n",
            b"Host: a\r\n",
            b"Content-Length: ",
            b"Connection: close\r\n",
            b"\r\n",
            b"topic=",
            b"%3A",
            b"&",
            b"http://",
        ];
        let mut rng = XorShift(crate::rng::Rng::new(0x9E37_79B9_7F4A_7C15));
        for _ in 0..4000 {
            let len = rng.below(120);
            let mut buf = Vec::with_capacity(len);
            while buf.len() < len {
                match rng.below(3) {
                    0 => buf.push(rng.next() as u8),
                    1 => buf.push(alphabet[rng.below(alphabet.len())]),
                    _ => buf.extend_from_slice(words[rng.below(words.len())]),
                }
            }
            check_parse(&buf, [8, 64, MAX][rng.below(3)]);
            check_query(&String::from_utf8_lossy(&buf));
            // Mutate a fixture too, so the parser gets past the request line.
            let mut m = fixtures[rng.below(fixtures.len())].to_vec();
            for _ in 0..=rng.below(3) {
                let i = rng.below(m.len());
                m[i] = alphabet[rng.below(alphabet.len())];
            }
            check_parse(&m, MAX);
            if let Parsed::Complete { request, .. } = parse(&m, MAX) {
                check_query(&request.query);
            }
        }
    }
}
