//! Canned HTTP/1.1 responses: the stream head and short plain-text answers. Pure bytes;
//! never decides policy (the event loop picks the status, this module only spells it).

/// The head of every event stream (protocol 2): close-delimited body, no compression, no
/// proxy buffering. The `retry:` line follows directly.
pub const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/event-stream; charset=utf-8\r\n\
Cache-Control: no-cache, no-transform\r\n\
X-Accel-Buffering: no\r\n\
Connection: close\r\n\
\r\n";

/// The stream head with extra headers (CORS) before its end.
pub fn stream_head(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut head = Vec::with_capacity(STREAM_HEAD.len() + 160);
    head.extend_from_slice(&STREAM_HEAD[..STREAM_HEAD.len() - 2]);
    for (name, value) in extra {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Header value of `Allow` for the stream endpoint.
pub const ALLOW_EVENTS: &str = "GET, HEAD, OPTIONS";

/// How a plain answer ends the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Keep the connection for another request (`http10`: say so to an HTTP/1.0 client).
    KeepAlive {
        http10: bool,
    },
    Close,
}

pub fn status_text(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A plain-text answer: `body` is one line (a newline is added). With `head_only` the body
/// is left out but its length is still announced, as HEAD requires.
pub fn plain(
    status: u16,
    body: &str,
    after: After,
    extra_headers: &[(&str, &str)],
    head_only: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status_text(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let has_body = status != 204 && status != 304;
    if has_body {
        out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: ");
        out.extend_from_slice((body.len() + 1).to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    connection_header(after, &mut out);
    for (name, value) in extra_headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if has_body && !head_only {
        out.extend_from_slice(body.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The interim answer to `Expect: 100-continue`: send the body.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// An answer with `body` of `content_type`, not cached (`POST /publish`, `/metrics`,
/// `/topics`). With `head_only` the body is left out but its length is still announced.
pub fn with_body(
    status: u16,
    content_type: &str,
    body: &[u8],
    after: After,
    head_only: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\n",
            status_text(status),
            body.len()
        )
        .as_bytes(),
    );
    connection_header(after, &mut out);
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// The `Connection` header `after` calls for, if any.
fn connection_header(after: After, out: &mut Vec<u8>) {
    match after {
        After::Close => out.extend_from_slice(b"Connection: close\r\n"),
        After::KeepAlive { http10: true } => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        After::KeepAlive { http10: false } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_head_with_extra_headers() {
        assert_eq!(stream_head(&[]), STREAM_HEAD);
        let h = String::from_utf8(stream_head(&[("Vary", "Origin")])).unwrap();
        assert!(
            h.ends_with("Connection: close\r\nVary: Origin\r\n\r\n"),
            "{h}"
        );
    }

    #[test]
    fn plain_close() {
        let r = plain(404, "not found", After::Close, &[], false);
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 10\r\nConnection: close\r\n\r\nnot found\n"
        );
    }

    #[test]
    fn head_only_keeps_length() {
        let r = plain(200, "ok", After::KeepAlive { http10: false }, &[], true);
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn no_content_has_no_body_headers() {
        let r = plain(
            204,
            "",
            After::KeepAlive { http10: true },
            &[("Allow", ALLOW_EVENTS)],
            false,
        );
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\nAllow: GET, HEAD, OPTIONS\r\n\r\n"
        );
    }
}
