//! `POST /publish` (protocol 3.4), the pure parts: who may publish (publisher tokens or
//! `publish.admin_open`), which body formats are taken, and how the answers of the ingest
//! line rules become an HTTP answer. The loop reads the body (`http::body`) and runs each
//! event through the same publish path as the ingest socket (`event_loop::http_publish`).

use crate::auth::{self, Pattern};
use crate::http::request::{Framing, Method, Request};
use crate::http::response::After;

/// The body formats `POST /publish` takes, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/x-ndjson`: one event per line, the ingest socket's lines and answers.
    Ndjson,
    /// `application/json`: one event object; the status says how it went.
    Json,
    /// `application/x-www-form-urlencoded` with Mercure's fields (`topic`, `data`, `type`);
    /// answered `text/plain` with the id.
    Form,
}

impl Format {
    /// The format of a `Content-Type` value (media type case-insensitive, parameters such
    /// as `charset` ignored); None: not taken (`415`).
    pub fn of(content_type: Option<&str>) -> Option<Format> {
        let media = content_type?.split(';').next()?.trim();
        [
            ("application/x-ndjson", Format::Ndjson),
            ("application/json", Format::Json),
            ("application/x-www-form-urlencoded", Format::Form),
        ]
        .into_iter()
        .find(|(name, _)| media.eq_ignore_ascii_case(name))
        .map(|(_, f)| f)
    }
}

/// The topics a request may publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The admin listener with `publish.admin_open`.
    Any,
    /// A publisher token's `publish` patterns.
    Patterns(Vec<Pattern>),
}

impl Grant {
    /// The first of `topics` the grant does not cover, if any.
    pub fn uncovered<'t>(&self, topics: &'t [Box<str>]) -> Option<&'t str> {
        match self {
            Grant::Any => None,
            Grant::Patterns(p) => topics.iter().map(|t| &**t).find(|t| !auth::covers(p, t)),
        }
    }
}

/// A publish to read the body of and run.
#[derive(Debug, PartialEq, Eq)]
pub struct PublishPlan {
    pub format: Format,
    pub grant: Grant,
    pub framing: Framing,
    /// Answer `100 Continue` before reading the body.
    pub expect_continue: bool,
    /// After the answer: keep the connection for the next request, or close.
    pub after: After,
}

/// A `POST /publish` in flight on a connection (`ConnState::Publishing`): from its head
/// until its answer is queued. Then it is dropped, body buffer and all: an idle keep-alive
/// publisher holds nothing but its connection.
#[derive(Debug)]
pub struct InFlight {
    pub plan: PublishPlan,
    pub decoder: crate::http::body::BodyDecoder,
    /// Bytes received and not taken by the decoder: while the body is read, none (the
    /// decoder takes every byte); after it, the start of the next pipelined request.
    pub input: Vec<u8>,
    /// The decoded body; nothing of it is published before it is complete.
    pub body: Vec<u8>,
    pub stage: Stage,
    /// The answers, in the ingest socket's line form, as they become due.
    pub answers: crate::ingest::Answers,
}

/// Where a publish in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the body (the request timeout runs).
    Body,
    /// Cluster mode: the body is complete and waits for room in the queue to Redis.
    Waiting,
    /// The body's events were submitted: the answer waits for their commit.
    Committing,
}

/// What the router reads for `/publish`.
pub struct PublishCtx<'a> {
    pub on_admin: bool,
    /// `publish.admin_open`.
    pub admin_open: bool,
    /// `publish.max_body_bytes`.
    pub max_body_bytes: usize,
    pub auth: &'a auth::Auth,
    /// Unix seconds (token expiry).
    pub now_s: u64,
}

/// A refused publish request: status, reason, and whether to add
/// `WWW-Authenticate: Bearer` (a `401`). The connection closes after it: the body, if any,
/// was not read.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: String,
}

/// Decides a request to `/publish`: method (405) → token (401/403) → `Content-Type` (415)
/// → a declared length over `publish.max_body_bytes` (413) → read the body.
pub fn route(req: &Request, ctx: &PublishCtx<'_>) -> Result<PublishPlan, Refused> {
    let refuse = |status: u16, reason: &str| {
        Err(Refused {
            status,
            reason: reason.to_owned(),
        })
    };
    if req.method != Method::Post {
        return refuse(405, "method not allowed");
    }
    let grant = match ctx.on_admin && ctx.admin_open {
        true => Grant::Any,
        false => match ctx
            .auth
            .check_publisher(req.authorization.as_deref(), ctx.now_s)
        {
            Ok(patterns) => Grant::Patterns(patterns),
            Err(denied) => return refuse(denied.status, denied.reason),
        },
    };
    let Some(format) = Format::of(req.content_type.as_deref()) else {
        return refuse(
            415,
            "Content-Type must be application/x-ndjson, application/json or \
             application/x-www-form-urlencoded",
        );
    };
    if let Framing::Length(n) = req.framing
        && n > ctx.max_body_bytes as u64
    {
        return refuse(
            413,
            &format!("request body larger than {} bytes", ctx.max_body_bytes),
        );
    }
    let after = match req.keep_alive {
        true => After::KeepAlive { http10: req.http10 },
        false => After::Close,
    };
    Ok(PublishPlan {
        format,
        grant,
        framing: req.framing,
        // An HTTP/1.0 client does not wait for it (RFC 9110 10.1.1).
        expect_continue: req.expect_continue && !req.http10,
        after,
    })
}

/// The status of a refused event in a `json` or `form` publish, from the ingest answer's
/// reason: the token (`403`), a closed topic or a reused key (`409`), an event over the
/// size limit (`413`), the store not committing it (`503`), else the event itself (`400`).
pub fn status_of(reason: &str) -> u16 {
    if reason.starts_with(NOT_COVERED) {
        403
    } else if reason.contains("is final") || reason.contains("was used for a different event") {
        409
    } else if reason.starts_with("line longer than") {
        413
    } else if reason.starts_with("not stored") || reason.starts_with("not confirmed") {
        503
    } else {
        400
    }
}

/// The start of the answer to an event whose topics the token does not cover.
pub const NOT_COVERED: &str = "the token does not cover topic";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::http::request::{Parsed, parse};

    fn req(text: &str) -> Request {
        match parse(text.as_bytes(), 8192) {
            Parsed::Complete { request, .. } => request,
            other => panic!("{other:?}"),
        }
    }

    fn auth(secret: &str) -> auth::Auth {
        let c = config::Auth {
            secret: secret.into(),
            ..config::Auth::default()
        };
        auth::Auth::from_config(&c).unwrap()
    }

    fn now_s() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(secret: &str, claims: &str) -> String {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let claims: serde_json::Value = serde_json::from_str(claims).unwrap();
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn ctx(a: &auth::Auth, on_admin: bool, admin_open: bool) -> PublishCtx<'_> {
        PublishCtx {
            on_admin,
            admin_open,
            max_body_bytes: 100,
            auth: a,
            now_s: now_s(),
        }
    }

    const NDJSON: &str = "Content-Type: application/x-ndjson\r\n";

    #[test]
    fn formats_by_content_type() {
        assert_eq!(
            Format::of(Some("application/x-ndjson")),
            Some(Format::Ndjson)
        );
        assert_eq!(
            Format::of(Some("Application/JSON; charset=utf-8")),
            Some(Format::Json)
        );
        assert_eq!(
            Format::of(Some("application/x-www-form-urlencoded")),
            Some(Format::Form)
        );
        assert_eq!(Format::of(Some("text/plain")), None);
        assert_eq!(Format::of(Some("application/jsonx")), None);
        assert_eq!(Format::of(None), None);
    }

    #[test]
    fn token_rules() {
        let a = auth("s3cret");
        let post = |hdrs: &str| req(&format!("POST /publish HTTP/1.1\r\nHost: h\r\n{hdrs}\r\n"));
        // No token: 401 (the loop adds WWW-Authenticate).
        let r = route(&post(NDJSON), &ctx(&a, false, false)).unwrap_err();
        assert_eq!(r.status, 401);
        // A valid token without a publish claim: 403.
        let sub = token(
            "s3cret",
            &format!(r#"{{"subscribe":["a"],"exp":{}}}"#, now_s() + 60),
        );
        let r = route(
            &post(&format!("{NDJSON}Authorization: Bearer {sub}\r\n")),
            &ctx(&a, false, false),
        )
        .unwrap_err();
        assert_eq!(r.status, 403);
        // A wrong signature: 401.
        let bad = token(
            "other",
            &format!(r#"{{"publish":["a"],"exp":{}}}"#, now_s() + 60),
        );
        let r = route(
            &post(&format!("{NDJSON}Authorization: Bearer {bad}\r\n")),
            &ctx(&a, false, false),
        )
        .unwrap_err();
        assert_eq!(r.status, 401);
        // Expired: 401.
        let old = token("s3cret", r#"{"publish":["a"],"exp":1000}"#);
        let r = route(
            &post(&format!("{NDJSON}Authorization: Bearer {old}\r\n")),
            &ctx(&a, false, false),
        )
        .unwrap_err();
        assert_eq!(r.status, 401);
        // A publisher token: its patterns.
        let good = token(
            "s3cret",
            &format!(r#"{{"publish":["news","chat.*"],"exp":{}}}"#, now_s() + 60),
        );
        let plan = route(
            &post(&format!("{NDJSON}Authorization: Bearer {good}\r\n")),
            &ctx(&a, false, false),
        )
        .unwrap();
        let topics: Vec<Box<str>> = vec!["news".into(), "chat.1".into()];
        assert_eq!(plan.grant.uncovered(&topics), None);
        let topics: Vec<Box<str>> = vec!["news".into(), "other".into()];
        assert_eq!(plan.grant.uncovered(&topics), Some("other"));
        // admin_open counts on the admin listener only.
        assert_eq!(
            route(&post(NDJSON), &ctx(&a, true, true)).unwrap().grant,
            Grant::Any
        );
        assert_eq!(
            route(&post(NDJSON), &ctx(&a, false, true))
                .unwrap_err()
                .status,
            401
        );
        // No key configured: 403 saying what to configure.
        let none = auth::Auth::from_config(&config::Auth::default()).unwrap();
        let r = route(&post(NDJSON), &ctx(&none, false, false)).unwrap_err();
        assert_eq!(
            (r.status, r.reason.as_str()),
            (403, auth::PUBLISH_NEEDS_KEY)
        );
        assert!(route(&post(NDJSON), &ctx(&none, true, true)).is_ok());
    }

    #[test]
    fn method_type_and_size() {
        let a = auth("s");
        let open = ctx(&a, true, true);
        let get = req("GET /publish HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(route(&get, &open).unwrap_err().status, 405);
        let plain = req("POST /publish HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\n\r\n");
        assert_eq!(route(&plain, &open).unwrap_err().status, 415);
        let none = req("POST /publish HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(route(&none, &open).unwrap_err().status, 415);
        let big = req(&format!(
            "POST /publish HTTP/1.1\r\nHost: h\r\n{NDJSON}Content-Length: 101\r\n\r\n"
        ));
        assert_eq!(route(&big, &open).unwrap_err().status, 413);
        let fits = req(&format!(
            "POST /publish HTTP/1.1\r\nHost: h\r\n{NDJSON}Content-Length: 100\r\n\
             Expect: 100-continue\r\nConnection: close\r\n\r\n"
        ));
        let plan = route(&fits, &open).unwrap();
        assert_eq!(plan.framing, Framing::Length(100));
        assert!(plan.expect_continue);
        assert_eq!(plan.after, After::Close);
    }

    #[test]
    fn statuses_of_refused_events() {
        assert_eq!(status_of("the token does not cover topic \"x\""), 403);
        assert_eq!(status_of("topic \"a\" is final"), 409);
        assert_eq!(status_of("not stored: redis unavailable"), 503);
        assert_eq!(status_of("missing \"data\""), 400);
    }
}
