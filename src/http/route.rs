//! The HTTP router: one parsed request plus what it may read (listener, peer, caps, CORS
//! and auth policy, the hub, the wall clock) in, one [`Decision`] out. Owns the order of
//! the checks and every status, reason and header of the answers (docs/refused-inputs.md
//! lists them): admin routing and `/metrics` → connection caps → path → method → query →
//! origin → token → resume plan. Pure: no sockets, no clock but `Ctx::wall_ms`, no
//! counters (a decision says what the loop must count), and nothing created in the hub
//! (topics are planned by name; the loop interns them when it opens the stream).

use crate::auth::{Auth, Credentials};
use crate::http::cors::{self, Cors, Verdict};
use crate::http::publish::{PublishCtx, PublishPlan};
use crate::http::request::{self, Method, Request};
use crate::http::response::{ALLOW_EVENTS, After};
use crate::hub::{Hub, Resume};
use crate::limits::{ClientKey, PerClient, forwarded_client};
use crate::sse;
use std::borrow::Cow;
use std::net::IpAddr;

/// `Retry-After` of every answer at a connection cap, in seconds.
pub const RETRY_AFTER_S: &str = "5";
/// The same in milliseconds: the base of the `retry:` of a retry-only stream.
pub const RETRY_AFTER_MS: u64 = 5_000;

/// A non-zero `Content-Length` on `/events`.
const BODY_ON_EVENTS: &str = "a request to /events may not carry a body";

/// `Allow` of `/healthz` and `/metrics`.
const ALLOW_GET_HEAD: &str = "GET, HEAD";
const METRICS_NOT_LOOPBACK: &str =
    "metrics are served to loopback clients only (set http.admin_listen)";

/// `/topics/NAME` refused to a client that is not on this host (no admin listener).
const TOPICS_NOT_LOOPBACK: &str =
    "topics are served to loopback clients only (set http.admin_listen)";

/// What the router reads. Built by the loop for each request; nothing here is changed.
pub struct Ctx<'a> {
    /// The connection was accepted on the admin listener.
    pub on_admin: bool,
    /// `http.admin_listen` is configured (`/metrics`, `/healthz`, `/readyz` and `/topics`
    /// are served only there).
    pub admin_split: bool,
    /// The TCP peer; `None` when unknown (then not a loopback client).
    pub peer: Option<IpAddr>,
    /// `/readyz`: why the hub cannot accept and commit now (`None`: ready). The loop fills
    /// it for `/readyz` requests only.
    pub not_ready: Option<&'a str>,
    /// The per-client cap: its trusted proxies, and whether a forwarded client has room.
    pub per_client: &'a PerClient,
    /// The connection comes from a trusted proxy and is not counted yet
    /// (`Counted::ViaProxy`): it counts for the client its `X-Forwarded-For` names.
    pub via_proxy: bool,
    /// Accepted past a cap with `http.overload_as_retry` (the connection's `OVER_CAP` /
    /// `OVER_PER_IP` flags; with both set, `PerClient`).
    pub over_cap: Option<Cap>,
    /// `http.overload_as_retry` now (for a forwarded client over the per-client cap).
    pub overload_as_retry: bool,
    /// `streams.max_topics`.
    pub max_topics: usize,
    pub auth: &'a Auth,
    pub cors: &'a Cors,
    /// Read only: resumes are planned by topic name.
    pub hub: &'a Hub,
    /// Unix milliseconds, read once per loop turn by the caller (token expiry).
    pub wall_ms: u64,
    /// Cluster mode: whether a stream request may wait for the node to read Redis.
    pub catch_up: CatchUp,
    /// The hub is stopping: every answer closes its connection, and publishes are refused.
    pub draining: bool,
    /// `publish.admin_open`.
    pub publish_admin_open: bool,
    /// `publish.max_body_bytes`.
    pub max_body_bytes: usize,
}

/// Cluster mode (protocol 7): what a stream request may do while the node has not read
/// what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Decide now: single node, or the node has read Redis since the request came.
    Decide,
    /// First look: wait (`Decision::CatchUp`) when the node has not read Redis yet
    /// (`ready` false), or when the resume id is above its last id.
    MayWait { ready: bool },
    /// The wait is over and the node is still behind: `Decision::ComeBack`.
    GiveUp,
}

/// Which connection cap a refused request is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `http.max_connections`: `503`.
    Global,
    /// `http.max_per_ip`: `429`.
    PerClient,
}

impl Cap {
    /// The answer's status and reason.
    pub fn status_reason(self) -> (u16, &'static str) {
        match self {
            Cap::Global => (503, "server at connection limit"),
            Cap::PerClient => (429, "too many connections from your address"),
        }
    }
}

/// The router's answer: a decision, and a client the loop must count first.
#[derive(Debug, PartialEq, Eq)]
pub struct Routed<'r> {
    /// The client a trusted proxy named, which has room under `http.max_per_ip`: the loop
    /// counts the connection for it (`PerClient::try_add`, which then succeeds, and
    /// `Counted::As`) whatever the decision, as `count_forwarded_client` did.
    pub count_client: Option<ClientKey>,
    pub decision: Decision<'r>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'r> {
    /// A plain answer (`response::plain`), counted by status when `>= 400`.
    Answer(Answer<'r>),
    /// `/metrics`: the loop renders the body (`metrics::http_response`).
    Metrics { after: After, head_only: bool },
    /// `GET /topics`: a page of topics in name order (protocol 5), rendered by the loop.
    TopicList {
        query: TopicPage,
        after: After,
        head_only: bool,
    },
    /// `GET /topics/NAME` (a valid name): the loop answers with what the hub knows of it
    /// (protocol 5), or `404` for a topic it does not know.
    TopicInfo {
        name: Box<str>,
        after: After,
        head_only: bool,
    },
    /// A `GET /events` past a cap with `overload_as_retry`: the `200` stream head (no extra
    /// headers), then only `retry:` of `RETRY_AFTER_MS` plus the loop's jitter, then close.
    /// The loop counts `status` in the rejected requests.
    RetryOnly { status: u16 },
    /// A `HEAD /events` that passed every check: the stream head with `headers`, then close.
    StreamHead {
        headers: Vec<(&'static str, &'r str)>,
    },
    /// Open a stream.
    Stream(StreamPlan<'r>),
    /// `POST /publish` that passed its checks: read the body, then publish (protocol 3.4).
    Publish(PublishPlan),
    /// Cluster mode: the resume id `until` is above this node's last id (another node saw
    /// it first), or the node has not read Redis yet (`until` is `u64::MAX`). Route the
    /// request again once the node has read up to it or to the end of the stream, or once
    /// `cluster.catch_up` has passed (then with `CatchUp::GiveUp`).
    CatchUp { until: u64 },
    /// Cluster mode, a stream request the node could not catch up with in time (it has
    /// not read Redis yet, or is behind): the stream head with `headers`, then only
    /// `retry:`, then close — the client comes back with the same `Last-Event-ID`, and is
    /// neither told `reset` nor sent a replay the node cannot vouch for.
    ComeBack {
        headers: Vec<(&'static str, &'r str)>,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Answer<'r> {
    pub status: u16,
    /// The one-line body.
    pub reason: Cow<'static, str>,
    pub after: After,
    pub headers: Vec<(&'static str, &'r str)>,
    /// `HEAD`: the head without the body.
    pub head_only: bool,
}

/// A stream to open: subscribe `topics`, write the head with `headers` and `retry:`, then
/// replay or go live.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamPlan<'r> {
    /// Distinct, validated, in request order (the loop interns them).
    pub topics: Vec<Box<str>>,
    /// CORS headers of the stream head.
    pub headers: Vec<(&'static str, &'r str)>,
    /// Replay from this cursor, after this `reset` event; `None`: live from the hub's last id.
    pub replay: Option<(u64, Option<Vec<u8>>)>,
    /// What was already evicted when the stream started and the client was told (by
    /// `reset`) or did not ask for: only evictions above it end the replay.
    pub replay_floor: Option<u64>,
    /// Opened with a token: ms until its `exp` + leeway, when the stream must end.
    pub token_left_ms: Option<u64>,
    /// `cors::origin_hash` of the `Origin` header, for re-checks after a reload.
    pub origin_hash: Option<u64>,
}

/// Routes one request.
pub fn route<'r>(req: &'r Request, ctx: &Ctx<'_>) -> Routed<'r> {
    let after = if req.keep_alive && !req.has_body && !ctx.draining {
        After::KeepAlive { http10: req.http10 }
    } else {
        After::Close
    };
    let head_only = req.method == Method::Head;
    let uncounted = |decision| Routed {
        count_client: None,
        decision,
    };
    // `/metrics`, and everything on the admin listener, before the caps: an operator can
    // always read the metrics of a saturated server.
    if let Some(d) = route_admin(req, ctx, after, head_only) {
        return uncounted(d);
    }
    if let Some(cap) = ctx.over_cap {
        return uncounted(refuse_at_cap(cap, req, head_only, true));
    }
    let count_client = match forwarded_to_count(req, ctx) {
        Forwarded::NotCounted => None,
        Forwarded::Room(client) => Some(client),
        Forwarded::Full => {
            let retry = ctx.overload_as_retry;
            return uncounted(refuse_at_cap(Cap::PerClient, req, head_only, retry));
        }
    };
    Routed {
        count_client,
        decision: route_public(req, ctx, after, head_only),
    }
}

fn answer<'r>(
    status: u16,
    reason: impl Into<Cow<'static, str>>,
    after: After,
    headers: Vec<(&'static str, &'r str)>,
    head_only: bool,
) -> Decision<'r> {
    Decision::Answer(Answer {
        status,
        reason: reason.into(),
        after,
        headers,
        head_only,
    })
}

/// `/readyz` (protocol 5): `200 ready` when the hub accepts and can commit, else `503`
/// with the reason.
fn readiness<'r>(
    ctx: &Ctx<'_>,
    after: After,
    headers: Vec<(&'static str, &'r str)>,
    head_only: bool,
) -> Decision<'r> {
    match ctx.not_ready {
        None => answer(200, "ready", after, headers, head_only),
        Some(why) => answer(503, format!("not ready: {why}"), after, headers, head_only),
    }
}

/// With an admin listener, `/metrics`, `/healthz`, `/readyz` and `/topics` are served only
/// there; without one, `/metrics` and `/topics` on the public listener answer loopback
/// clients only, since they tell anyone who asks about topics, traffic and capacity.
/// `None`: a public route.
fn route_admin<'r>(
    req: &'r Request,
    ctx: &Ctx<'_>,
    after: After,
    head_only: bool,
) -> Option<Decision<'r>> {
    let on_admin = ctx.on_admin;
    if req.path == "/publish" && on_admin {
        return Some(publish(req, ctx));
    }
    if let Some(raw) = req.path.strip_prefix("/topics/") {
        return Some(topic_info(raw, req, ctx, after, head_only));
    }
    if req.path == "/topics" {
        return Some(topic_list(req, ctx, after, head_only));
    }
    Some(match req.path.as_str() {
        "/metrics" => operator_access(req, ctx, after, head_only, METRICS_NOT_LOOPBACK)
            .unwrap_or(Decision::Metrics { after, head_only }),
        "/healthz" | "/readyz" if ctx.admin_split && !on_admin => {
            answer(404, "not found", after, Vec::new(), head_only)
        }
        "/healthz" | "/readyz" if !matches!(req.method, Method::Get | Method::Head) => {
            let allow = vec![("Allow", ALLOW_GET_HEAD)];
            answer(405, "method not allowed", after, allow, false)
        }
        "/healthz" if on_admin => answer(200, "ok", after, Vec::new(), head_only),
        "/readyz" if on_admin => readiness(ctx, after, Vec::new(), head_only),
        _ if on_admin => answer(404, "not found", after, Vec::new(), head_only),
        _ => return None,
    })
}

/// `/publish`, on the public and the admin listener alike (protocol 3.4).
fn publish<'r>(req: &'r Request, ctx: &Ctx<'_>) -> Decision<'r> {
    if ctx.draining {
        // What would be published now could reach no stream before the exit.
        let reason = "not accepting publishes: draining (shutting down)";
        return answer(503, reason, After::Close, Vec::new(), false);
    }
    let pctx = PublishCtx {
        on_admin: ctx.on_admin,
        admin_open: ctx.publish_admin_open,
        max_body_bytes: ctx.max_body_bytes,
        auth: ctx.auth,
        now_s: ctx.wall_ms / 1000,
    };
    match crate::http::publish::route(req, &pctx) {
        Ok(plan) => Decision::Publish(plan),
        Err(refused) => {
            // The body was not read: close after the answer.
            let headers = match refused.status {
                401 => vec![("WWW-Authenticate", "Bearer")],
                405 => vec![("Allow", "POST")],
                _ => Vec::new(),
            };
            answer(refused.status, refused.reason, After::Close, headers, false)
        }
    }
}

/// Topics a `/topics` page lists at most (`limit`), and by default.
pub const TOPIC_PAGE_MAX: usize = 1000;
const TOPIC_PAGE_DEFAULT: usize = 100;

/// The query of `GET /topics`: `prefix`, `limit`, and `after` (the cursor: the last name of
/// the previous page).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicPage {
    pub prefix: String,
    pub after: Option<String>,
    pub limit: usize,
}

/// Parses `prefix=P&limit=N&after=NAME`; unknown parameters are refused.
fn topic_page(query: &str) -> Result<TopicPage, &'static str> {
    let mut page = TopicPage {
        limit: TOPIC_PAGE_DEFAULT,
        ..TopicPage::default()
    };
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let value = crate::http::request::percent_decode(value)
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or("bad percent-encoding in query")?;
        match key {
            "prefix" | "after" if value.len() > 200 => {
                return Err("prefix and after are at most 200 bytes");
            }
            "prefix" => page.prefix = value,
            "after" => page.after = Some(value).filter(|a| !a.is_empty()),
            "limit" => {
                page.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=TOPIC_PAGE_MAX).contains(n))
                    .ok_or("limit must be 1 to 1000")?;
            }
            _ => return Err("unknown parameter (prefix, limit, after)"),
        }
    }
    Ok(page)
}

/// Who may read what tells about the hub's users and traffic (`/metrics`, `GET /topics`,
/// `GET /topics/NAME`): with an admin listener only its clients (`404` elsewhere), without
/// one loopback clients only (`403` with `not_loopback`); `405` for a method other than
/// `GET` and `HEAD`. The refusal, if any.
fn operator_access<'r>(
    req: &'r Request,
    ctx: &Ctx<'_>,
    after: After,
    head_only: bool,
    not_loopback: &'static str,
) -> Option<Decision<'r>> {
    if ctx.admin_split && !ctx.on_admin {
        return Some(answer(404, "not found", after, Vec::new(), head_only));
    }
    if !matches!(req.method, Method::Get | Method::Head) {
        let allow = vec![("Allow", ALLOW_GET_HEAD)];
        return Some(answer(405, "method not allowed", after, allow, false));
    }
    if !ctx.on_admin && !client_is_loopback(req, ctx) {
        return Some(answer(403, not_loopback, after, Vec::new(), head_only));
    }
    None
}

/// `GET /topics?prefix=P&limit=N&after=NAME`.
fn topic_list<'r>(req: &'r Request, ctx: &Ctx<'_>, after: After, head_only: bool) -> Decision<'r> {
    if let Some(refused) = operator_access(req, ctx, after, head_only, TOPICS_NOT_LOOPBACK) {
        return refused;
    }
    match topic_page(&req.query) {
        Ok(query) => Decision::TopicList {
            query,
            after,
            head_only,
        },
        Err(why) => answer(400, why, after, Vec::new(), head_only),
    }
}

/// `GET /topics/NAME`.
fn topic_info<'r>(
    raw: &str,
    req: &'r Request,
    ctx: &Ctx<'_>,
    after: After,
    head_only: bool,
) -> Decision<'r> {
    if let Some(refused) = operator_access(req, ctx, after, head_only, TOPICS_NOT_LOOPBACK) {
        return refused;
    }
    let name = crate::http::request::percent_decode(raw)
        .filter(|n| crate::topic_name::validate(n).is_ok());
    match name.and_then(|n| String::from_utf8(n).ok()) {
        Some(name) => Decision::TopicInfo {
            name: name.into(),
            after,
            head_only,
        },
        None => answer(400, "invalid topic name", after, Vec::new(), head_only),
    }
}

/// Whether the client is on this host: the peer, or the `X-Forwarded-For` entry of a
/// trusted proxy (a proxy on this host forwards remote clients too).
fn client_is_loopback(req: &Request, ctx: &Ctx<'_>) -> bool {
    let Some(peer) = ctx.peer else {
        return false;
    };
    let client = match req.forwarded_for.as_deref() {
        Some(f) if ctx.per_client.is_trusted(peer) => match forwarded_client(f) {
            Some(ip) => ip,
            None => return false,
        },
        _ => peer,
    };
    client.is_loopback() || client.to_canonical().is_loopback()
}

/// A request past a cap. With `retry_stream`, a stream request gets a `200` stream carrying
/// only a jittered `retry:` (at least `Retry-After`), so browsers come back later instead
/// of giving up; anything else gets the plain cap answer, and closes.
fn refuse_at_cap(cap: Cap, req: &Request, head_only: bool, retry_stream: bool) -> Decision<'_> {
    let (status, reason) = cap.status_reason();
    if retry_stream && req.path == "/events" && req.method == Method::Get {
        return Decision::RetryOnly { status };
    }
    Decision::Answer(Answer {
        status,
        reason: reason.into(),
        after: After::Close,
        headers: vec![("Retry-After", RETRY_AFTER_S)],
        head_only,
    })
}

enum Forwarded {
    /// Not from a trusted proxy still uncounted, or no usable `X-Forwarded-For`.
    NotCounted,
    Room(ClientKey),
    /// The named client is at `http.max_per_ip`.
    Full,
}

/// With a per-client cap behind a trusted proxy, the client named by the proxy's
/// `X-Forwarded-For` entry, and whether it has room.
fn forwarded_to_count(req: &Request, ctx: &Ctx<'_>) -> Forwarded {
    if !ctx.via_proxy {
        return Forwarded::NotCounted;
    }
    let Some(client) = req.forwarded_for.as_deref().and_then(forwarded_client) else {
        return Forwarded::NotCounted;
    };
    let client = ClientKey::of(client);
    if ctx.per_client.has_room(client) {
        Forwarded::Room(client)
    } else {
        Forwarded::Full
    }
}

/// The public listener: path (404) → method (405) → query (400) → origin (403) → token
/// (401/403) → resume plan.
fn route_public<'r>(
    req: &'r Request,
    ctx: &Ctx<'_>,
    after: After,
    head_only: bool,
) -> Decision<'r> {
    // CORS headers go on every answer to an allowed origin, errors included.
    let verdict = ctx.cors.verdict(req.origin.as_deref());
    let mut headers: Vec<(&'static str, &'r str)> = Vec::new();
    if let Verdict::Allowed(origin) = verdict {
        ctx.cors.headers(origin, &mut headers);
    }
    match req.path.as_str() {
        // The caps were checked before: a connection past them publishes nothing either.
        "/publish" => return publish(req, ctx),
        // ssehub takes no request bodies: a body on the stream endpoint is refused and the
        // connection closed, so no framing disagreement with a proxy in front can smuggle
        // a second request (Transfer-Encoding is refused by the parser already).
        "/events" if req.has_body => {
            return answer(400, BODY_ON_EVENTS, After::Close, headers, head_only);
        }
        "/events" => match req.method {
            Method::Get | Method::Head => {}
            Method::Options => {
                if verdict == Verdict::Refused {
                    return answer(403, "origin not allowed", after, Vec::new(), false);
                }
                headers.push(("Allow", ALLOW_EVENTS));
                if matches!(verdict, Verdict::Allowed(_)) {
                    let mut preflight = Vec::new();
                    Cors::preflight_headers(&mut preflight);
                    headers.extend(preflight);
                }
                return answer(204, "", after, headers, false);
            }
            Method::Post | Method::Other => {
                headers.push(("Allow", ALLOW_EVENTS));
                return answer(405, "method not allowed", after, headers, false);
            }
        },
        "/healthz" | "/readyz" => {
            return match req.method {
                Method::Get | Method::Head if req.path == "/healthz" => {
                    answer(200, "ok", after, headers, head_only)
                }
                Method::Get | Method::Head => readiness(ctx, after, headers, head_only),
                _ => {
                    headers.push(("Allow", ALLOW_GET_HEAD));
                    answer(405, "method not allowed", after, headers, false)
                }
            };
        }
        // The server-wide `OPTIONS *` (RFC 9110 9.3.7): what the server supports. The
        // parser allows `*` with `OPTIONS` only.
        "*" => {
            headers.push(("Allow", ALLOW_EVENTS));
            return answer(204, "", after, headers, false);
        }
        _ => return answer(404, "not found", after, headers, head_only),
    }
    let query = match request::parse_stream_query(&req.query, ctx.max_topics) {
        Ok(q) => q,
        // After a 400 the connection is closed (protocol 2).
        Err(reason) => return answer(400, reason, After::Close, headers, head_only),
    };
    if verdict == Verdict::Refused {
        return answer(403, "origin not allowed", after, headers, head_only);
    }
    let creds = Credentials {
        authorization: req.authorization.as_deref(),
        cookie_header: req.cookie.as_deref(),
        query_token: query.token.as_deref(),
    };
    let token_exp = match ctx.auth.check(&query.topics, &creds, ctx.wall_ms / 1000) {
        Ok(exp) => exp,
        Err(denied) => {
            if denied.status == 401 {
                headers.push(("WWW-Authenticate", "Bearer"));
            }
            return answer(denied.status, denied.reason, after, headers, head_only);
        }
    };
    // The stream ends when its token expires (exp + leeway). A token in its last second
    // (the check counts whole seconds) is refused right here.
    let token_left_ms =
        token_exp.map(|exp| crate::auth::ms_left(exp, ctx.auth.leeway_s(), ctx.wall_ms));
    if token_left_ms == Some(0) {
        headers.push(("WWW-Authenticate", "Bearer"));
        return answer(401, "the token has expired", after, headers, head_only);
    }
    // The resume point: the Last-Event-ID header wins (what EventSource sends on
    // reconnect), else the lastEventId parameter (a first connection).
    let resume = req
        .last_event_id
        .as_deref()
        .or(query.last_event_id.as_deref());
    match ctx.catch_up {
        CatchUp::Decide => {}
        CatchUp::MayWait { ready: false } => return Decision::CatchUp { until: u64::MAX },
        CatchUp::MayWait { ready: true } => {
            if let Some(until) = ctx.hub.ahead_of_last(resume) {
                return Decision::CatchUp { until };
            }
        }
        CatchUp::GiveUp if head_only => return Decision::StreamHead { headers },
        CatchUp::GiveUp => return Decision::ComeBack { headers },
    }
    let (cursor, reset, replay) = match ctx.hub.plan_resume_names(&query.topics, resume) {
        Resume::Finished => return answer(204, "", after, headers, false),
        Resume::Stream {
            cursor,
            reset,
            replay,
        } => (cursor, reset, replay),
    };
    if head_only {
        return Decision::StreamHead { headers };
    }
    let reset_frame = reset.map(|r| sse::encode_reset(resume.unwrap_or(""), r.earliest_id));
    let gone = ctx.hub.evicted_up_to_names(&query.topics);
    // What was gone at the start was announced by `reset` (or not asked for); only later
    // evictions of unsent events end the replay.
    let replay_floor =
        ((reset_frame.is_some() || resume.is_none()) && gone > cursor).then_some(gone);
    Decision::Stream(StreamPlan {
        topics: query.topics,
        headers,
        replay: replay.then_some((cursor, reset_frame)),
        replay_floor,
        token_left_ms,
        origin_hash: req.origin.as_deref().map(cors::origin_hash),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{self, MintClaims};
    use crate::config;
    use crate::history::Limits;
    use crate::http::request::Parsed;
    use crate::ingest::line::Publish;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const ORIGIN: &str = "https://app.example";
    const SECRET: &str = "route-test-secret";
    const LEEWAY_S: u64 = 60;
    const KEEP: After = After::KeepAlive { http10: false };
    const CORS: [(&str, &str); 3] = [
        ("Access-Control-Allow-Origin", ORIGIN),
        ("Vary", "Origin"),
        ("Access-Control-Allow-Credentials", "true"),
    ];
    const PROXY: &str = "10.0.0.1";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn req(raw: &str) -> Request {
        match request::parse(raw.as_bytes(), 8192) {
            Parsed::Complete { request, .. } => request,
            other => panic!("{raw:?} did not parse: {other:?}"),
        }
    }

    /// `METHOD target HTTP/1.1` with a Host and `extra` header lines (each ending in CRLF).
    fn http(method: &str, target: &str, extra: &str) -> Request {
        req(&format!(
            "{method} {target} HTTP/1.1\r\nHost: h\r\n{extra}\r\n"
        ))
    }

    fn now_s() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(subscribe: &[&str], now_s: u64, ttl_s: u64) -> String {
        let subscribe: Vec<String> = subscribe.iter().map(|s| (*s).to_owned()).collect();
        let what = MintClaims {
            subscribe: &subscribe,
            ..MintClaims::default()
        };
        auth::mint(SECRET, what, now_s, ttl_s).unwrap()
    }

    /// Everything a `Ctx` borrows: `a` × 5 (history keeps 3: two evicted), `b` × 1,
    /// `done` × 3 then a final one (the first evicted).
    struct World {
        auth: Auth,
        cors: Cors,
        hub: Hub,
        per_client: PerClient,
        ids: Vec<u64>,
    }

    impl World {
        fn new() -> World {
            let limits = Limits {
                max_events: 3,
                max_age: 60_000,
                max_bytes: 1 << 20,
            };
            let mut hub = Hub::new(limits, 0, 1_000);
            let mut ids = Vec::new();
            let events: [(&str, bool); 10] = [
                ("a", false),
                ("a", false),
                ("a", false),
                ("a", false),
                ("a", false),
                ("b", false),
                ("done", false),
                ("done", false),
                ("done", false),
                ("done", true),
            ];
            for (i, (topic, is_final)) in events.into_iter().enumerate() {
                let p = Publish {
                    topics: vec![topic.into()],
                    event: None,
                    data: "x".into(),
                    is_final,
                    key: None,
                };
                let e = hub.accept(&p, 0, 1_000 + i as u64 * 10).unwrap();
                hub.commit(&e);
                ids.push(e.id);
            }
            let auth = Auth::from_config(&config::Auth {
                secret: SECRET.into(),
                private: vec!["secret/*".into()],
                leeway: Duration::from_secs(LEEWAY_S),
                ..config::Auth::default()
            })
            .unwrap();
            World {
                auth,
                cors: Cors::new(&[ORIGIN.into()], true),
                hub,
                per_client: PerClient::new(1, &[ip(PROXY)]),
                ids,
            }
        }

        /// A public-listener request from a remote peer, nothing over a cap.
        fn ctx(&self) -> Ctx<'_> {
            Ctx {
                on_admin: false,
                admin_split: false,
                peer: Some(ip("198.51.100.7")),
                not_ready: None,
                per_client: &self.per_client,
                via_proxy: false,
                over_cap: None,
                overload_as_retry: false,
                max_topics: 2,
                auth: &self.auth,
                cors: &self.cors,
                hub: &self.hub,
                wall_ms: now_s() * 1000,
                catch_up: CatchUp::Decide,
                draining: false,
                publish_admin_open: false,
                max_body_bytes: 1 << 20,
            }
        }
    }

    /// The decision, checking that nothing was to be counted.
    fn decide<'r>(req: &'r Request, ctx: &Ctx<'_>) -> Decision<'r> {
        let routed = route(req, ctx);
        assert_eq!(routed.count_client, None);
        routed.decision
    }

    fn plain<'r>(
        status: u16,
        reason: &str,
        after: After,
        headers: &[(&'static str, &'r str)],
        head_only: bool,
    ) -> Decision<'r> {
        Decision::Answer(Answer {
            status,
            reason: Cow::Owned(reason.to_owned()),
            after,
            headers: headers.to_vec(),
            head_only,
        })
    }

    fn at_cap(status: u16, reason: &str, head_only: bool) -> Decision<'static> {
        Decision::Answer(Answer {
            status,
            reason: Cow::Owned(reason.to_owned()),
            after: After::Close,
            headers: vec![("Retry-After", "5")],
            head_only,
        })
    }

    fn stream(d: Decision<'_>) -> StreamPlan<'_> {
        match d {
            Decision::Stream(plan) => plan,
            other => panic!("not a stream: {other:?}"),
        }
    }

    fn live(topics: &[&str]) -> StreamPlan<'static> {
        StreamPlan {
            topics: topics.iter().map(|t| (*t).into()).collect(),
            headers: Vec::new(),
            replay: None,
            replay_floor: None,
            token_left_ms: None,
            origin_hash: None,
        }
    }

    #[test]
    fn keep_alive_and_close_follow_the_request() {
        let w = World::new();
        let ctx = w.ctx();
        let r = req("GET /nope HTTP/1.0\r\n\r\n");
        assert_eq!(
            decide(&r, &ctx),
            plain(404, "not found", After::Close, &[], false)
        );
        let r = req("GET /nope HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let after = After::KeepAlive { http10: true };
        assert_eq!(decide(&r, &ctx), plain(404, "not found", after, &[], false));
        let r = http("GET", "/nope", "Connection: close\r\n");
        let d = decide(&r, &ctx);
        assert_eq!(d, plain(404, "not found", After::Close, &[], false));
        // A body closes too; HEAD leaves the body out.
        let r = http("HEAD", "/nope", "Content-Length: 2\r\n");
        let d = decide(&r, &ctx);
        assert_eq!(d, plain(404, "not found", After::Close, &[], true));
    }

    #[test]
    fn admin_listener_split() {
        let w = World::new();
        let public = Ctx {
            admin_split: true,
            peer: Some(ip("127.0.0.1")),
            ..w.ctx()
        };
        let admin = Ctx {
            on_admin: true,
            ..public
        };
        let origin = format!("Origin: {ORIGIN}\r\n");
        // On the main listener both are unknown, without CORS, even from loopback.
        for path in ["/metrics", "/healthz"] {
            let r = http("GET", path, &origin);
            assert_eq!(
                decide(&r, &public),
                plain(404, "not found", KEEP, &[], false)
            );
            let r = http("HEAD", path, "");
            assert_eq!(
                decide(&r, &public),
                plain(404, "not found", KEEP, &[], true)
            );
            let r = http("POST", path, "");
            let d = decide(&r, &public);
            assert_eq!(
                d,
                plain(404, "not found", KEEP, &[], false),
                "404 before 405"
            );
        }
        // On the admin listener: `/metrics`, `/healthz`, and nothing else.
        let r = http("GET", "/metrics", "");
        let metrics = Decision::Metrics {
            after: KEEP,
            head_only: false,
        };
        assert_eq!(decide(&r, &admin), metrics);
        let r = http("HEAD", "/metrics", "Connection: close\r\n");
        let metrics = Decision::Metrics {
            after: After::Close,
            head_only: true,
        };
        assert_eq!(decide(&r, &admin), metrics);
        let r = http("GET", "/healthz", &origin);
        assert_eq!(decide(&r, &admin), plain(200, "ok", KEEP, &[], false));
        let r = http("HEAD", "/healthz", "");
        assert_eq!(decide(&r, &admin), plain(200, "ok", KEEP, &[], true));
        for path in ["/metrics", "/healthz"] {
            let r = http("DELETE", path, "");
            let allow = [("Allow", "GET, HEAD")];
            let d = decide(&r, &admin);
            assert_eq!(d, plain(405, "method not allowed", KEEP, &allow, false));
        }
        let r = http("GET", "/events?topic=a", &origin);
        assert_eq!(
            decide(&r, &admin),
            plain(404, "not found", KEEP, &[], false)
        );
        let r = req("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(
            decide(&r, &admin),
            plain(404, "not found", KEEP, &[], false)
        );
    }

    #[test]
    fn metrics_without_admin_listener_are_for_loopback_clients() {
        let mut w = World::new();
        // Trusted proxy: the peer 10.0.0.1 (remote) and ::1 (a proxy on this host).
        w.per_client = PerClient::new(1, &[ip(PROXY), ip("::1")]);
        let r = http("GET", "/metrics", "");
        let metrics = Decision::Metrics {
            after: KEEP,
            head_only: false,
        };
        let refused = plain(403, METRICS_NOT_LOOPBACK, KEEP, &[], false);
        let at = |peer: Option<&str>| Ctx {
            peer: peer.map(ip),
            ..w.ctx()
        };
        for peer in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(decide(&r, &at(Some(peer))), metrics, "{peer}");
        }
        for peer in [Some("198.51.100.7"), Some("::ffff:10.1.1.1"), None] {
            assert_eq!(decide(&r, &at(peer)), refused, "{peer:?}");
        }
        let r = http("HEAD", "/metrics", "");
        let d = decide(&r, &at(None));
        assert_eq!(d, plain(403, METRICS_NOT_LOOPBACK, KEEP, &[], true));
        let r = http("PUT", "/metrics", "");
        let allow = [("Allow", "GET, HEAD")];
        let d = decide(&r, &at(Some("198.51.100.7")));
        assert_eq!(d, plain(405, "method not allowed", KEEP, &allow, false));
        // A trusted proxy's last X-Forwarded-For entry is the client.
        let fwd = |xff: &str| http("GET", "/metrics", &format!("X-Forwarded-For: {xff}\r\n"));
        let proxy = at(Some(PROXY));
        assert_eq!(decide(&fwd("203.0.113.9, 127.0.0.1"), &proxy), metrics);
        assert_eq!(decide(&fwd("127.0.0.1, 203.0.113.9"), &proxy), refused);
        assert_eq!(decide(&fwd("garbage"), &proxy), refused);
        // A loopback proxy forwards remote clients: they are not loopback.
        let local_proxy = at(Some("::1"));
        assert_eq!(decide(&fwd("203.0.113.9"), &local_proxy), refused);
        assert_eq!(decide(&http("GET", "/metrics", ""), &local_proxy), metrics);
        // From an untrusted peer the header proves nothing.
        assert_eq!(
            decide(&fwd("127.0.0.1"), &at(Some("198.51.100.7"))),
            refused
        );
        assert_eq!(decide(&fwd("203.0.113.9"), &at(Some("127.0.0.1"))), metrics);
        // `/healthz` without a split is a public route, CORS included.
        let r = http("GET", "/healthz", &format!("Origin: {ORIGIN}\r\n"));
        assert_eq!(decide(&r, &at(None)), plain(200, "ok", KEEP, &CORS, false));
        let r = http("POST", "/healthz", "Content-Length: 1\r\n");
        let allow = [("Allow", "GET, HEAD")];
        let d = decide(&r, &at(None));
        assert_eq!(
            d,
            plain(405, "method not allowed", After::Close, &allow, false)
        );
    }

    #[test]
    fn accepted_past_a_cap() {
        let w = World::new();
        let global = Ctx {
            over_cap: Some(Cap::Global),
            ..w.ctx()
        };
        let per_client = Ctx {
            over_cap: Some(Cap::PerClient),
            ..w.ctx()
        };
        let origin = format!("Origin: {ORIGIN}\r\n");
        // A stream request gets the retry-only stream, whatever it asks.
        let r = http("GET", "/events?topic=secret/x", &origin);
        assert_eq!(decide(&r, &global), Decision::RetryOnly { status: 503 });
        assert_eq!(decide(&r, &per_client), Decision::RetryOnly { status: 429 });
        let r = http("GET", "/events", "");
        assert_eq!(decide(&r, &global), Decision::RetryOnly { status: 503 });
        // Anything else the plain cap answer, without CORS, closing.
        let global_reason = "server at connection limit";
        let per_client_reason = "too many connections from your address";
        let r = http("HEAD", "/events?topic=a", &origin);
        assert_eq!(decide(&r, &global), at_cap(503, global_reason, true));
        assert_eq!(
            decide(&r, &per_client),
            at_cap(429, per_client_reason, true)
        );
        for r in [
            http("GET", "/healthz", &origin),
            http("OPTIONS", "/events", &origin),
            http("GET", "/nope", ""),
        ] {
            assert_eq!(decide(&r, &global), at_cap(503, global_reason, false));
            assert_eq!(
                decide(&r, &per_client),
                at_cap(429, per_client_reason, false)
            );
        }
        // `/metrics` is routed before the caps.
        let loopback = Ctx {
            peer: Some(ip("127.0.0.1")),
            ..global
        };
        let metrics = Decision::Metrics {
            after: KEEP,
            head_only: false,
        };
        assert_eq!(decide(&http("GET", "/metrics", ""), &loopback), metrics);
        let r = http("GET", "/metrics", "");
        let d = decide(&r, &global);
        assert_eq!(d, plain(403, METRICS_NOT_LOOPBACK, KEEP, &[], false));
    }

    #[test]
    fn a_trusted_proxys_client_counts_against_the_per_client_cap() {
        let mut w = World::new();
        let full = ClientKey::of(ip("203.0.113.9"));
        assert!(w.per_client.try_add(full));
        let via = Ctx {
            peer: Some(ip(PROXY)),
            via_proxy: true,
            ..w.ctx()
        };
        let fwd = |target: &str, client: &str| {
            http(
                "GET",
                target,
                &format!("X-Forwarded-For: 1.2.3.4, {client}\r\n"),
            )
        };
        // Room: counted, and routed on (the decision does not depend on the count).
        let r = fwd("/events?topic=b", "203.0.113.10");
        let routed = route(&r, &via);
        assert_eq!(routed.count_client, Some(ClientKey::of(ip("203.0.113.10"))));
        assert_eq!(stream(routed.decision), live(&["b"]));
        let r = fwd("/nope", "2001:db8::1");
        let routed = route(&r, &via);
        assert_eq!(routed.count_client, Some(ClientKey::of(ip("2001:db8::1"))));
        assert_eq!(routed.decision, plain(404, "not found", KEEP, &[], false));
        // At the cap: 429 without `overload_as_retry`, stream or not; nothing counted.
        let reason = "too many connections from your address";
        for target in ["/events?topic=b", "/nope"] {
            assert_eq!(
                decide(&fwd(target, "203.0.113.9"), &via),
                at_cap(429, reason, false)
            );
        }
        let r = http(
            "HEAD",
            "/events?topic=b",
            "X-Forwarded-For: 203.0.113.9\r\n",
        );
        assert_eq!(decide(&r, &via), at_cap(429, reason, true));
        // With it, a stream request gets the retry-only stream.
        let retry = Ctx {
            overload_as_retry: true,
            ..via
        };
        let r = fwd("/events?topic=b", "203.0.113.9");
        assert_eq!(decide(&r, &retry), Decision::RetryOnly { status: 429 });
        assert_eq!(
            decide(&fwd("/nope", "203.0.113.9"), &retry),
            at_cap(429, reason, false)
        );
        // Not counted: no usable X-Forwarded-For, or a connection already counted.
        assert_eq!(
            stream(decide(&fwd("/events?topic=b", "junk"), &via)),
            live(&["b"])
        );
        let r = http("GET", "/events?topic=b", "");
        assert_eq!(stream(decide(&r, &via)), live(&["b"]));
        let counted = Ctx {
            via_proxy: false,
            ..via
        };
        let r = fwd("/events?topic=b", "203.0.113.9");
        assert_eq!(stream(decide(&r, &counted)), live(&["b"]));
        // The admin routes come first: `/metrics` is never counted nor capped.
        let r = fwd("/metrics", "203.0.113.9");
        assert_eq!(
            decide(&r, &via),
            plain(403, METRICS_NOT_LOOPBACK, KEEP, &[], false)
        );
    }

    #[test]
    fn cors_on_every_answer_to_an_allowed_origin() {
        let w = World::new();
        let ctx = w.ctx();
        let allowed = format!("Origin: {ORIGIN}\r\n");
        let refused = "Origin: https://evil.example\r\n";
        let r = http("GET", "/events?topic=b", &allowed);
        let plan = stream(decide(&r, &ctx));
        assert_eq!(plan.headers, CORS);
        assert_eq!(plan.origin_hash, Some(cors::origin_hash(ORIGIN)));
        let r = http("GET", "/events?topic=b", refused);
        let d = decide(&r, &ctx);
        assert_eq!(d, plain(403, "origin not allowed", KEEP, &[], false));
        let r = http("HEAD", "/events?topic=b", refused);
        let d = decide(&r, &ctx);
        assert_eq!(d, plain(403, "origin not allowed", KEEP, &[], true));
        // Errors before the origin check: CORS when allowed, none when refused.
        let r = http("GET", "/nope", &allowed);
        assert_eq!(
            decide(&r, &ctx),
            plain(404, "not found", KEEP, &CORS, false)
        );
        let r = http("GET", "/nope", refused);
        assert_eq!(decide(&r, &ctx), plain(404, "not found", KEEP, &[], false));
        let r = http("GET", "/events?topic=a%ZZ", refused);
        let reason = "bad percent-encoding in query";
        let d = decide(&r, &ctx);
        assert_eq!(d, plain(400, reason, After::Close, &[], false), "400 first");
        // Without a policy every origin is served, without CORS headers.
        let open = Cors::default();
        let no_policy = Ctx {
            cors: &open,
            ..w.ctx()
        };
        let r = http("GET", "/events?topic=b", refused);
        let plan = stream(decide(&r, &no_policy));
        assert_eq!(plan.headers, []);
        assert_eq!(
            plan.origin_hash,
            Some(cors::origin_hash("https://evil.example"))
        );
        assert_eq!(
            stream(decide(&http("GET", "/events?topic=b", ""), &ctx)),
            live(&["b"])
        );
    }

    #[test]
    fn options_preflight_and_asterisk() {
        let w = World::new();
        let ctx = w.ctx();
        let r = http("OPTIONS", "/events", &format!("Origin: {ORIGIN}\r\n"));
        let mut headers = CORS.to_vec();
        headers.extend([
            ("Allow", "GET, HEAD, OPTIONS"),
            ("Access-Control-Allow-Methods", "GET, HEAD"),
            (
                "Access-Control-Allow-Headers",
                "Authorization, Last-Event-ID, Cache-Control",
            ),
            ("Access-Control-Max-Age", "600"),
        ]);
        assert_eq!(decide(&r, &ctx), plain(204, "", KEEP, &headers, false));
        // No token needed, no query looked at.
        let r = http(
            "OPTIONS",
            "/events?topic=secret/x&topic=%",
            &format!("Origin: {ORIGIN}\r\n"),
        );
        assert_eq!(decide(&r, &ctx), plain(204, "", KEEP, &headers, false));
        let r = http("OPTIONS", "/events", "Origin: https://evil.example\r\n");
        let d = decide(&r, &ctx);
        assert_eq!(d, plain(403, "origin not allowed", KEEP, &[], false));
        let allow = [("Allow", "GET, HEAD, OPTIONS")];
        let r = http("OPTIONS", "/events", "");
        assert_eq!(decide(&r, &ctx), plain(204, "", KEEP, &allow, false));
        let r = req("OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        assert_eq!(
            decide(&r, &ctx),
            plain(204, "", After::Close, &allow, false)
        );
        let r = req(&format!(
            "OPTIONS * HTTP/1.1\r\nHost: h\r\nOrigin: {ORIGIN}\r\n\r\n"
        ));
        let mut headers = CORS.to_vec();
        headers.extend(allow);
        assert_eq!(decide(&r, &ctx), plain(204, "", KEEP, &headers, false));
    }

    #[test]
    fn not_found_and_method_not_allowed() {
        let w = World::new();
        let ctx = w.ctx();
        for path in ["/", "/events/", "/EVENTS", "/metrics/x"] {
            let r = http("GET", path, "");
            assert_eq!(decide(&r, &ctx), plain(404, "not found", KEEP, &[], false));
        }
        let r = http("HEAD", "/nope", "");
        assert_eq!(decide(&r, &ctx), plain(404, "not found", KEEP, &[], true));
        let allow = [("Allow", "GET, HEAD, OPTIONS")];
        let r = http("DELETE", "/events?topic=a", "");
        let d = decide(&r, &ctx);
        assert_eq!(d, plain(405, "method not allowed", KEEP, &allow, false));
        let r = http(
            "POST",
            "/events?topic=a",
            &format!("Origin: {ORIGIN}\r\nContent-Length: 5\r\n"),
        );
        let d = decide(&r, &ctx);
        assert_eq!(d, plain(400, BODY_ON_EVENTS, After::Close, &CORS, false));
        let r = http("GET", "/events?topic=a", "Content-Length: 1\r\n");
        let d = decide(&r, &ctx);
        assert_eq!(d, plain(400, BODY_ON_EVENTS, After::Close, &[], false));
    }

    #[test]
    fn bad_stream_queries_are_400_and_close() {
        let w = World::new();
        let ctx = w.ctx();
        let cases = [
            ("/events", "missing topic parameter"),
            ("/events?lastEventId=5", "missing topic parameter"),
            ("/events?topic=", "bad topic: empty topic name"),
            ("/events?topic=a&topic=b&topic=c", "too many topics (max 2)"),
            (
                "/events?topic=a%20b",
                "bad topic: topic name may only hold A-Z a-z 0-9 _ - . : / @",
            ),
            ("/events?topic=a&token=%FF", "token is not valid UTF-8"),
        ];
        for (target, reason) in cases {
            let r = http("GET", target, "");
            let d = decide(&r, &ctx);
            assert_eq!(d, plain(400, reason, After::Close, &[], false), "{target}");
            let r = http("HEAD", target, &format!("Origin: {ORIGIN}\r\n"));
            let d = decide(&r, &ctx);
            assert_eq!(d, plain(400, reason, After::Close, &CORS, true), "{target}");
        }
        // Duplicates merge: two distinct topics fit.
        let r = http("GET", "/events?topic=a&topic=b&topic=a", "");
        assert_eq!(stream(decide(&r, &ctx)).topics, live(&["a", "b"]).topics);
    }

    #[test]
    fn tokens_for_private_topics() {
        let w = World::new();
        let now = now_s();
        let ctx = Ctx {
            wall_ms: now * 1000,
            ..w.ctx()
        };
        let bearer = [("WWW-Authenticate", "Bearer")];
        let r = http("GET", "/events?topic=b&topic=secret/x", "");
        let reason = "a token is required for a private topic";
        assert_eq!(decide(&r, &ctx), plain(401, reason, KEEP, &bearer, false));
        let r = http(
            "HEAD",
            "/events?topic=secret/x",
            &format!("Origin: {ORIGIN}\r\n"),
        );
        let mut headers = CORS.to_vec();
        headers.extend(bearer);
        assert_eq!(decide(&r, &ctx), plain(401, reason, KEEP, &headers, true));
        let r = http(
            "GET",
            "/events?topic=secret/x",
            "Authorization: Basic eDp5\r\n",
        );
        let reason = "Authorization must be a Bearer token";
        assert_eq!(decide(&r, &ctx), plain(401, reason, KEEP, &bearer, false));
        // A valid token that does not cover the topic: 403, no challenge.
        let other = token(&["secret/y"], now, 3600);
        let r = http("GET", &format!("/events?topic=secret/x&token={other}"), "");
        let reason = "the token does not cover a requested topic";
        assert_eq!(decide(&r, &ctx), plain(403, reason, KEEP, &[], false));
        // Covered: the stream lives until exp + leeway, by `wall_ms`.
        let good = token(&["secret/*"], now, 3600);
        let left = Some((3600 + LEEWAY_S) * 1000);
        let r = http(
            "GET",
            &format!("/events?topic=secret/x&topic=b&token={good}"),
            "",
        );
        let expected = StreamPlan {
            token_left_ms: left,
            ..live(&["secret/x", "b"])
        };
        assert_eq!(stream(decide(&r, &ctx)), expected);
        let r = http(
            "GET",
            "/events?topic=secret/x",
            &format!("Authorization: bearer {good}\r\n"),
        );
        assert_eq!(stream(decide(&r, &ctx)).token_left_ms, left);
        let r = http(
            "GET",
            "/events?topic=secret/x",
            &format!("Cookie: ssehub_token={good}\r\n"),
        );
        assert_eq!(stream(decide(&r, &ctx)).token_left_ms, left);
        // The Authorization header wins over a good query token.
        let r = http(
            "GET",
            &format!("/events?topic=secret/x&token={good}"),
            "Authorization: Bearer nonsense\r\n",
        );
        let d = decide(&r, &ctx);
        assert_eq!(
            d,
            plain(401, "the token is malformed", KEEP, &bearer, false)
        );
        // Public topics ignore any token.
        let r = http("GET", "/events?topic=b", "Authorization: Basic eDp5\r\n");
        assert_eq!(stream(decide(&r, &ctx)), live(&["b"]));
    }

    /// The JWT check counts whole seconds: in the last second of `exp + leeway` the token
    /// still verifies, and the router refuses it by `wall_ms`.
    #[test]
    fn a_token_in_its_last_second() {
        let w = World::new();
        let now = now_s();
        let tok = token(&["secret/x"], now, 0);
        let r = http("GET", &format!("/events?topic=secret/x&token={tok}"), "");
        let end_ms = (now + LEEWAY_S) * 1000;
        let at = |wall_ms| Ctx { wall_ms, ..w.ctx() };
        let bearer = [("WWW-Authenticate", "Bearer")];
        for wall_ms in [end_ms, end_ms + 999] {
            let d = decide(&r, &at(wall_ms));
            assert_eq!(d, plain(401, "the token has expired", KEEP, &bearer, false));
        }
        assert_eq!(stream(decide(&r, &at(end_ms - 1))).token_left_ms, Some(1));
        let r = http(
            "HEAD",
            &format!("/events?topic=secret/x&token={tok}"),
            &format!("Origin: {ORIGIN}\r\n"),
        );
        let mut headers = CORS.to_vec();
        headers.extend(bearer);
        let d = decide(&r, &at(end_ms));
        assert_eq!(d, plain(401, "the token has expired", KEEP, &headers, true));
        assert_eq!(
            decide(&r, &at(end_ms - 1)),
            Decision::StreamHead {
                headers: CORS.to_vec()
            }
        );
    }

    /// Cluster mode: an id above the node's last id waits for the node's reader (once);
    /// ids it already has, ids that are no ids, and absent ones are decided at once.
    #[test]
    fn cluster_resumes_ahead_of_the_node_wait_to_catch_up() {
        let w = World::new();
        let ctx = Ctx {
            catch_up: CatchUp::MayWait { ready: true },
            ..w.ctx()
        };
        let last = *w.ids.last().unwrap();
        let ahead = format!("Last-Event-ID: {}\r\n", last + 5);
        let r = http("GET", "/events?topic=a", &ahead);
        assert_eq!(decide(&r, &ctx), Decision::CatchUp { until: last + 5 });
        // The second look (catch-up over or timed out) decides: an id never seen: reset.
        let again = Ctx {
            catch_up: CatchUp::Decide,
            ..w.ctx()
        };
        let plan = stream(decide(&r, &again));
        assert!(plan.replay.is_some_and(|(_, reset)| reset.is_some()));
        for extra in [
            format!("Last-Event-ID: {last}\r\n"),
            "Last-Event-ID: abc\r\n".to_string(),
            String::new(),
        ] {
            let r = http("GET", "/events?topic=a", &extra);
            assert!(
                matches!(decide(&r, &ctx), Decision::Stream(_)),
                "{extra:?} decided at once"
            );
        }
        // Auth and CORS are decided before any wait.
        let r = http("GET", "/events?topic=secret/x", &ahead);
        assert!(matches!(decide(&r, &ctx), Decision::Answer(a) if a.status == 401));
        // Before the node has read Redis, every stream request waits, even a fresh one.
        let unready = Ctx {
            catch_up: CatchUp::MayWait { ready: false },
            ..w.ctx()
        };
        let fresh = http("GET", "/events?topic=a", "");
        assert_eq!(
            decide(&fresh, &unready),
            Decision::CatchUp { until: u64::MAX }
        );
        // The wait is over and the node still behind: only `retry:`, with the CORS headers.
        let late = Ctx {
            catch_up: CatchUp::GiveUp,
            ..w.ctx()
        };
        let r = http(
            "GET",
            "/events?topic=a",
            &format!("Origin: {ORIGIN}\r\n{ahead}"),
        );
        assert_eq!(
            decide(&r, &late),
            Decision::ComeBack {
                headers: CORS.to_vec()
            }
        );
    }

    /// `/topics/NAME` is served where `/metrics` is: loopback clients, or the admin listener.
    #[test]
    fn topic_info_is_served_where_metrics_is() {
        let w = World::new();
        let local = Ctx {
            peer: Some(ip("127.0.0.1")),
            ..w.ctx()
        };
        let r = http("GET", "/topics/a%2Fb", "");
        assert_eq!(
            decide(&r, &local),
            Decision::TopicInfo {
                name: "a/b".into(),
                after: KEEP,
                head_only: false
            }
        );
        let refused = decide(&r, &w.ctx());
        assert!(matches!(refused, Decision::Answer(a) if a.status == 403));
        let split = Ctx {
            admin_split: true,
            ..local
        };
        assert!(matches!(decide(&r, &split), Decision::Answer(a) if a.status == 404));
        let admin = Ctx {
            admin_split: true,
            on_admin: true,
            ..w.ctx()
        };
        assert!(matches!(decide(&r, &admin), Decision::TopicInfo { .. }));
        let local = Ctx {
            peer: Some(ip("127.0.0.1")),
            ..w.ctx()
        };
        let bad = http("GET", "/topics/a%20b", "");
        assert!(matches!(decide(&bad, &local), Decision::Answer(a) if a.status == 400));
        let post = http("POST", "/topics/a", "Content-Length: 0\r\n");
        assert!(matches!(decide(&post, &local), Decision::Answer(a) if a.status == 405));
    }

    /// `/topics` takes `prefix`, `limit` (1 to 1000, default 100) and `after`, nothing else.
    #[test]
    fn topic_list_queries() {
        let w = World::new();
        let local = Ctx {
            peer: Some(ip("127.0.0.1")),
            ..w.ctx()
        };
        let page = |target: &str| match decide(&http("GET", target, ""), &local) {
            Decision::TopicList { query, .. } => Ok(query),
            Decision::Answer(a) => Err(a.status),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            page("/topics"),
            Ok(TopicPage {
                prefix: String::new(),
                after: None,
                limit: 100
            })
        );
        assert_eq!(
            page("/topics?prefix=a%2F&limit=2&after=a%2Fb"),
            Ok(TopicPage {
                prefix: "a/".into(),
                after: Some("a/b".into()),
                limit: 2
            })
        );
        for bad in [
            "/topics?limit=0",
            "/topics?limit=1001",
            "/topics?x=1",
            "/topics?prefix=%zz",
        ] {
            assert_eq!(page(bad), Err(400), "{bad}");
        }
        assert!(matches!(
            decide(&http("GET", "/topics", ""), &w.ctx()),
            Decision::Answer(a) if a.status == 403
        ));
    }

    /// `/readyz` is served where `/healthz` is: `200 ready`, or `503` with the reason.
    #[test]
    fn readiness_answers_where_healthz_does() {
        let w = World::new();
        let r = http("GET", "/readyz", "");
        assert_eq!(decide(&r, &w.ctx()), plain(200, "ready", KEEP, &[], false));
        let draining = Ctx {
            not_ready: Some("draining"),
            ..w.ctx()
        };
        assert_eq!(
            decide(&r, &draining),
            plain(503, "not ready: draining", KEEP, &[], false)
        );
        // With an admin listener: only there.
        let split = Ctx {
            admin_split: true,
            ..w.ctx()
        };
        assert!(matches!(decide(&r, &split), Decision::Answer(a) if a.status == 404));
        let admin = Ctx {
            admin_split: true,
            on_admin: true,
            not_ready: Some("redis unavailable"),
            ..w.ctx()
        };
        assert!(matches!(decide(&r, &admin), Decision::Answer(a) if a.status == 503));
        let post = http("POST", "/readyz", "Content-Length: 0\r\n");
        assert!(matches!(decide(&post, &w.ctx()), Decision::Answer(a) if a.status == 405));
    }

    #[test]
    fn resume_plans() {
        let w = World::new();
        let ctx = w.ctx();
        let ids = &w.ids;
        let get = |target: String, extra: &str| http("GET", &target, extra);
        // Live: no resume point.
        let r = get("/events?topic=a&topic=b".into(), "");
        assert_eq!(stream(decide(&r, &ctx)), live(&["a", "b"]));
        // Replay from a retained point: no reset, no floor.
        let r = get(format!("/events?topic=b&lastEventId={}", ids[0]), "");
        let expected = StreamPlan {
            replay: Some((ids[0], None)),
            ..live(&["b"])
        };
        assert_eq!(stream(decide(&r, &ctx)), expected);
        // The Last-Event-ID header wins over the parameter.
        let r = get(
            format!("/events?topic=b&lastEventId={}", ids[5]),
            &format!("Last-Event-ID: {}\r\n", ids[0]),
        );
        assert_eq!(stream(decide(&r, &ctx)), expected);
        // Missed events are gone: `reset` first, and the evicted ids are the floor.
        let reset = |last: &str| {
            format!(
                "event: reset\ndata: {{\"lastEventId\":\"{last}\",\"earliestId\":\"{}\"}}\n\n",
                ids[2]
            )
            .into_bytes()
        };
        let r = get(format!("/events?topic=a&lastEventId={}", ids[0]), "");
        let expected = StreamPlan {
            replay: Some((ids[0], Some(reset(&ids[0].to_string())))),
            replay_floor: Some(ids[1]),
            ..live(&["a"])
        };
        assert_eq!(stream(decide(&r, &ctx)), expected);
        // An id that was never issued: everything retained, after `reset`.
        let r = get("/events?topic=a".into(), "Last-Event-ID: abc\r\n");
        let expected = StreamPlan {
            replay: Some((0, Some(reset("abc")))),
            replay_floor: Some(ids[1]),
            ..live(&["a"])
        };
        assert_eq!(stream(decide(&r, &ctx)), expected);
        // Nothing evicted: a `reset` (the id is unknown) but no floor.
        let r = get("/events?topic=b".into(), "Last-Event-ID: abc\r\n");
        let frame = format!(
            "event: reset\ndata: {{\"lastEventId\":\"abc\",\"earliestId\":\"{}\"}}\n\n",
            ids[5]
        );
        let expected = StreamPlan {
            replay: Some((0, Some(frame.into_bytes()))),
            ..live(&["b"])
        };
        assert_eq!(stream(decide(&r, &ctx)), expected);
        // Resuming exactly at the last evicted id missed nothing.
        let r = get(format!("/events?topic=a&lastEventId={}", ids[1]), "");
        let expected = StreamPlan {
            replay: Some((ids[1], None)),
            ..live(&["a"])
        };
        assert_eq!(stream(decide(&r, &ctx)), expected);
        // A fresh request on a final topic: its history then the end; what is already
        // evicted was not asked for, so it is the floor.
        let r = get("/events?topic=done".into(), "");
        let expected = StreamPlan {
            replay: Some((0, None)),
            replay_floor: Some(ids[6]),
            ..live(&["done"])
        };
        assert_eq!(stream(decide(&r, &ctx)), expected);
        let r = get(format!("/events?topic=done&lastEventId={}", ids[8]), "");
        let expected = StreamPlan {
            replay: Some((ids[8], None)),
            ..live(&["done"])
        };
        assert_eq!(stream(decide(&r, &ctx)), expected);
        // Seen the final event: 204, keeping the connection, even for HEAD.
        let final_id = format!("Last-Event-ID: {}\r\nOrigin: {ORIGIN}\r\n", ids[9]);
        let r = get("/events?topic=done".into(), &final_id);
        assert_eq!(decide(&r, &ctx), plain(204, "", KEEP, &CORS, false));
        let r = http("HEAD", "/events?topic=done", &final_id);
        assert_eq!(decide(&r, &ctx), plain(204, "", KEEP, &CORS, false));
        // An unknown topic is planned as a new one, and not created.
        let r = get(format!("/events?topic=new&lastEventId={}", ids[0]), "");
        let expected = StreamPlan {
            replay: Some((ids[0], None)),
            ..live(&["new"])
        };
        assert_eq!(stream(decide(&r, &ctx)), expected);
        assert!(w.hub.topics.lookup("new").is_none());
    }

    #[test]
    fn head_events_gets_the_stream_head_only() {
        let w = World::new();
        let ctx = w.ctx();
        let r = http("HEAD", "/events?topic=a&lastEventId=abc", "");
        assert_eq!(decide(&r, &ctx), Decision::StreamHead { headers: vec![] });
        let r = http(
            "HEAD",
            "/events?topic=new",
            &format!("Origin: {ORIGIN}\r\n"),
        );
        assert_eq!(
            decide(&r, &ctx),
            Decision::StreamHead {
                headers: CORS.to_vec()
            }
        );
        assert!(w.hub.topics.lookup("new").is_none());
    }
}
