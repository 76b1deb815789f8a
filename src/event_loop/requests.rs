//! The HTTP side of the loop: read a request head, parse it (`http::request`), route it
//! (`http::route`: a pure decision) and apply the decision — a plain answer, `/metrics`,
//! `/topics`, a stream start, a parked resume (cluster mode) or a publish
//! (`http_publish`) — then write what is pending and look at the next pipelined request.

use super::*;

impl Server {
    // ---- HTTP: read and parse ---------------------------------------------------------------

    /// Input on an HTTP connection: a request head being read is parsed and answered; on
    /// a stream or a lingering connection it is discarded (`StreamTable::discard_input`).
    pub(super) fn conn_readable(&mut self, key: u32) {
        let Some(conn) = self.streams.get_mut(key) else {
            return;
        };
        if conn.has(flags::CLOSING) {
            return;
        }
        if let ConnState::Publishing(_) = conn.state {
            return self.read_publish_body(key);
        }
        let ConnState::Reading { buf } = &mut conn.state else {
            let stats = &mut self.stats;
            return self.streams.discard_input(key, &mut self.scratch, stats);
        };
        let limit = self.config.http.max_header_bytes + 1;
        let tls = conn.tls.as_deref_mut();
        let outcome = read_into(&mut conn.sock, tls, buf, limit, &mut self.scratch);
        if conn.tls.as_ref().is_some_and(|t| t.wants_write()) {
            // Handshake messages to send.
            self.streams.mark_pending(key);
        }
        match outcome {
            ReadOutcome::Open => self.process_requests(key),
            ReadOutcome::Closed => self.streams.close(key),
        }
    }

    /// Answers complete request heads in the read buffer, one at a time: the next is only
    /// looked at once the previous answer has been written (pipelining stays bounded).
    pub(super) fn process_requests(&mut self, key: u32) {
        loop {
            // Cluster mode: a request waits for the node to catch up; the next one waits.
            if self.is_parked(key) {
                return;
            }
            let Some(conn) = self.streams.get_mut(key) else {
                return;
            };
            if conn.out.is_some() || conn.has(flags::CLOSING | flags::CLOSE_AFTER_FLUSH) {
                return;
            }
            let ConnState::Reading { buf } = &mut conn.state else {
                return;
            };
            if buf.is_empty() {
                // Idle keep-alive connection: give the buffer back.
                *buf = Vec::new();
                return;
            }
            match request::parse(buf, self.config.http.max_header_bytes) {
                Parsed::Partial => return,
                Parsed::Reject(r) => {
                    return self.answer(key, r.status, r.reason, After::Close, &[], false);
                }
                Parsed::Complete { request, head_len } => {
                    buf.drain(..head_len);
                    let catch_up = match self.commit.is_remote() {
                        true => route::CatchUp::MayWait {
                            ready: self.cluster_ready,
                        },
                        false => route::CatchUp::Decide,
                    };
                    self.handle_request(key, request, catch_up);
                }
            }
        }
    }

    /// Routes one request (`http::route`: a pure decision) and applies the decision.
    /// `catch_up` (cluster mode): whether a stream request may be parked to wait for the
    /// node's reader, or is past waiting.
    pub(super) fn handle_request(&mut self, key: u32, req: Request, catch_up: route::CatchUp) {
        let deadline = self.now + self.request_timeout();
        self.streams.reschedule(key, deadline, &mut self.wheel);
        let Some(conn) = self.streams.get(key) else {
            return;
        };
        let over_cap = match conn.flags & (flags::OVER_CAP | flags::OVER_PER_IP) {
            0 => None,
            f if f & flags::OVER_PER_IP != 0 => Some(route::Cap::PerClient),
            _ => Some(route::Cap::Global),
        };
        // The peer address (a syscall) matters only to `/metrics` (loopback clients only).
        let peer = match req.path == "/metrics" || req.path.starts_with("/topics") {
            true => conn.sock.peer_addr().ok().map(|a| a.ip()),
            false => None,
        };
        let not_ready = match req.path == "/readyz" {
            true => self.not_ready(),
            false => None,
        };
        let ctx = route::Ctx {
            on_admin: conn.has(flags::ADMIN),
            admin_split: self.ops.admin_configured,
            peer,
            not_ready: not_ready.as_deref(),
            per_client: &self.per_client,
            via_proxy: self.streams.counted_as(key) == Some(Counted::ViaProxy),
            over_cap,
            overload_as_retry: self.config.http.overload_as_retry,
            max_topics: self.config.streams.max_topics,
            auth: &self.auth,
            cors: &self.cors,
            hub: &self.hub,
            wall_ms: self.wall_ms(),
            catch_up,
            draining: self.draining_until.is_some(),
            publish_admin_open: self.config.publish.admin_open,
            max_body_bytes: self.config.publish.max_body_bytes,
        };
        let routed = route::route(&req, &ctx);
        if let Some(client) = routed.count_client
            && self.per_client.try_add(client)
        {
            self.streams.set_counted_as(key, Counted::As(client));
        }
        match routed.decision {
            Decision::Answer(a) => {
                if req.path == "/publish" {
                    self.stats.publishes.requests.count(a.status);
                }
                self.answer(key, a.status, &a.reason, a.after, &a.headers, a.head_only);
            }
            Decision::Metrics { after, head_only } => {
                let body = self.render_metrics();
                let bytes = crate::metrics::http_response(&body, after, head_only);
                self.streams
                    .queue(key, bytes.into(), after == After::Close, self.now);
            }
            Decision::TopicList {
                query,
                after,
                head_only,
            } => {
                let body = self
                    .hub
                    .topics_json(&query.prefix, query.after.as_deref(), query.limit);
                let bytes = crate::metrics::json_response(&body, after, head_only);
                self.streams
                    .queue(key, bytes.into(), after == After::Close, self.now);
            }
            Decision::TopicInfo {
                name,
                after,
                head_only,
            } => match self.hub.topic_info(&name) {
                Some(info) => {
                    let body = info.json(&name);
                    let bytes = crate::metrics::json_response(&body, after, head_only);
                    self.streams
                        .queue(key, bytes.into(), after == After::Close, self.now);
                }
                None => self.answer(key, 404, "unknown topic", after, &[], head_only),
            },
            Decision::RetryOnly { status } => {
                // A capped stream request with overload_as_retry: a `200` stream carrying
                // only a jittered `retry:` (at least `Retry-After`), so browsers come back
                // later instead of giving up.
                self.stats.rejected.count(status);
                let jitter_max = self.config.streams.retry_jitter.as_millis() as u64;
                let retry = route::RETRY_AFTER_MS + self.rng.below(jitter_max + 1);
                let mut bytes = response::stream_head(&[]);
                bytes.extend_from_slice(&sse::retry(retry));
                self.streams.queue(key, bytes.into(), true, self.now);
            }
            Decision::StreamHead { headers } => {
                let start = table::Start::default();
                self.start_stream(key, Box::default(), start, &headers, true);
            }
            Decision::ComeBack { headers } => {
                // Cluster mode, not caught up in time: come back later, same resume id.
                let retry = self.retry_ms();
                let mut bytes = response::stream_head(&headers);
                bytes.extend_from_slice(&sse::retry(retry));
                self.streams.queue(key, bytes.into(), true, self.now);
            }
            Decision::Stream(plan) => {
                let start = table::Start {
                    replay: plan.replay,
                    replay_floor: plan.replay_floor,
                    // `left_ms` may be near u64::MAX for a far-future `exp`.
                    token_deadline: plan.token_left_ms.map(|ms| self.now.saturating_add(ms)),
                    origin_hash: plan.origin_hash,
                    retry_ms: self.retry_ms(),
                };
                let topics = plan.topics.iter().map(|n| self.hub.intern(n)).collect();
                self.start_stream(key, topics, start, &plan.headers, false);
            }
            Decision::CatchUp { until } => self.park(key, req, until),
            Decision::Publish(plan) => self.start_publish(key, plan),
        }
    }

    /// Why the hub cannot accept and commit now (`/readyz`, protocol 5); `None`: ready.
    pub(super) fn not_ready(&self) -> Option<String> {
        if self.draining_until.is_some() {
            return Some("draining (shutting down)".into());
        }
        if let Some(link) = self.commit.link() {
            if !link.is_up() {
                return Some(format!("redis unavailable: {}", link.down_reason()));
            }
            if !self.cluster_ready {
                return Some("redis not read yet".into());
            }
        }
        self.log_failing
            .as_ref()
            .map(|why| format!("the log is failing writes: {why}"))
    }

    /// The `retry:` value of a stream's start: `retry_base` plus up to `retry_jitter`.
    pub(super) fn retry_ms(&mut self) -> u64 {
        let s = &self.config.streams;
        let jitter = s.retry_jitter.as_millis() as u64;
        s.retry_base.as_millis() as u64 + self.rng.below(jitter + 1)
    }

    /// Queues a plain answer; `After::Close` lingers and closes once it is written.
    pub(super) fn answer(
        &mut self,
        key: u32,
        status: u16,
        reason: &str,
        after: After,
        headers: &[(&str, &str)],
        head_only: bool,
    ) {
        let (now, stats) = (self.now, &mut self.stats);
        self.streams
            .answer(key, status, reason, after, headers, head_only, now, stats);
    }

    /// Starts a stream (`StreamTable::start_stream`), then drains what the client sent
    /// with its head (edge-triggered: nobody would tell us again).
    pub(super) fn start_stream(
        &mut self,
        key: u32,
        topics: Box<[TopicId]>,
        start: table::Start,
        headers: &[(&str, &str)],
        head_only: bool,
    ) {
        let limits = self.stream_limits();
        self.streams.start_stream(
            key,
            topics,
            start,
            headers,
            head_only,
            &mut self.hub,
            &mut self.wheel,
            &limits,
            self.now,
            &mut self.stats,
        );
        self.conn_readable(key);
    }

    /// Writes every pending connection's queue; answered connections look at their next
    /// pipelined request.
    pub(super) fn flush_pending(&mut self) {
        let limits = self.stream_limits();
        let mut answered = Vec::new();
        self.streams.flush_pending(
            &mut self.hub,
            &mut self.wheel,
            &limits,
            self.now,
            &mut self.stats,
            &mut answered,
        );
        for key in answered {
            self.process_requests(key);
            self.conn_readable(key);
        }
    }
}
