//! `POST /publish` in the loop (protocol 3.4): the routed request takes over its
//! connection (`ConnState::Publishing`), answers `100 Continue` when asked, reads and
//! decodes its body (`http::body`) until it is whole, runs each event through the same
//! publish path as an ingest line (`producers::publish`: accept → submit → commit), closes
//! the log batch, and answers once every event is committed or refused. Then the
//! connection reads its next request; nothing of the request stays behind.
//!
//! Nothing is published from a body that is not complete: a refused body (`400`/`413`)
//! or one that stops arriving (`http.request_timeout`) publishes no event of it.

use super::producers::{Publishing, publish};
use super::*;
use crate::commit::Sender;
use crate::http::body::{self, BodyDecoder, Step};
use crate::http::publish::{self as http_publish, Format, InFlight, PublishPlan, Stage};

/// Body bytes read from one connection per call before the decoder takes them.
const BODY_READ_CHUNK: usize = 64 * 1024;

impl Server {
    /// A routed `POST /publish`: the connection becomes a publish in flight; what came with
    /// the head is decoded at once, the rest as it arrives.
    pub(super) fn start_publish(&mut self, key: u32, plan: PublishPlan) {
        let max = self.config.publish.max_body_bytes;
        let decoder = match BodyDecoder::new(plan.framing, max) {
            Ok(d) => d,
            Err(r) => return self.refuse_publish(key, r.status, &r.reason),
        };
        let Some(conn) = self.streams.get_mut(key) else {
            return;
        };
        let ConnState::Reading { buf } = &mut conn.state else {
            return;
        };
        let input = std::mem::take(buf);
        let expect_continue = plan.expect_continue;
        conn.state = ConnState::Publishing(Box::new(InFlight {
            plan,
            decoder,
            input,
            body: Vec::new(),
            stage: Stage::Body,
            answers: Default::default(),
        }));
        self.read_publish_body(key);
        // A client that asked waits for this before it sends the body (curl: bodies over
        // 1 KiB). Not sent when the body came with the head or was refused meanwhile.
        if expect_continue
            && let Some(conn) = self.streams.get(key)
            && let ConnState::Publishing(p) = &conn.state
            && p.stage == Stage::Body
            && !conn.has(flags::CLOSING | flags::CLOSE_AFTER_FLUSH)
        {
            self.streams
                .queue(key, response::CONTINUE.to_vec().into(), false, self.now);
        }
    }

    /// Decodes what was received of the body and reads more, until the socket has nothing
    /// more for now or the body is complete; then the body is published.
    pub(super) fn read_publish_body(&mut self, key: u32) {
        loop {
            let Some(conn) = self.streams.get_mut(key) else {
                return;
            };
            if conn.has(flags::CLOSING) {
                return;
            }
            let ConnState::Publishing(p) = &mut conn.state else {
                return;
            };
            if p.stage != Stage::Body {
                // The next request is read once this one is answered.
                return;
            }
            match p.decoder.decode(&p.input, &mut p.body) {
                Ok((used, Step::Done)) => {
                    p.input.drain(..used);
                    return self.run_publish(key);
                }
                Ok((_, Step::NeedMore)) => p.input.clear(),
                Err(r) => return self.refuse_publish(key, r.status, &r.reason),
            }
            let tls = conn.tls.as_deref_mut();
            let outcome = read_into(
                &mut conn.sock,
                tls,
                &mut p.input,
                BODY_READ_CHUNK,
                &mut self.scratch,
            );
            if conn.tls.as_ref().is_some_and(|t| t.wants_write()) {
                self.streams.mark_pending(key);
            }
            let Some(ConnState::Publishing(p)) = self.streams.get(key).map(|c| &c.state) else {
                return;
            };
            match (outcome, p.input.is_empty()) {
                // Nothing more for now: wait for the next readable event.
                (ReadOutcome::Open, true) => return,
                (ReadOutcome::Open, false) => {}
                // The client went away (or half-closed) before the body was whole: nothing
                // of it is published. What it did send is decoded first: a body completed
                // by its last bytes is still published and answered.
                (ReadOutcome::Closed, _) => {
                    if let Some(conn) = self.streams.get_mut(key)
                        && let ConnState::Publishing(p) = &mut conn.state
                    {
                        p.plan.after = After::Close;
                        if let Ok((_, Step::Done)) = p.decoder.decode(&p.input, &mut p.body) {
                            p.input.clear();
                            return self.run_publish(key);
                        }
                    }
                    return self.streams.close(key);
                }
            }
        }
    }

    /// Answers a refused publish (status and one-line reason) and closes: the rest of its
    /// body, if any, is not read.
    fn refuse_publish(&mut self, key: u32, status: u16, reason: &str) {
        self.stats.publishes.requests.count(status);
        if let Some(conn) = self.streams.get_mut(key)
            && let ConnState::Publishing(_) = conn.state
        {
            conn.state = ConnState::Reading { buf: Vec::new() };
        }
        self.answer(key, status, reason, After::Close, &[], false);
    }

    /// The body is complete: each of its events goes through the ingest publish path, the
    /// batch is closed, and the answer waits for their commit (`finish_publish`). In
    /// cluster mode, while `commit::MAX_IN_FLIGHT` publishes wait for Redis, the body waits
    /// (`publishes_waiting`) as a producer's next lines would.
    fn run_publish(&mut self, key: u32) {
        let may_send = self.commit.may_send();
        let Some(conn) = self.streams.get_mut(key) else {
            return;
        };
        // No timer while committing: the commit answers in bounded time (a sync, or
        // Redis's answer or its timeout; room in the queue comes back with the answers).
        if let Some(t) = conn.timer.take() {
            self.wheel.cancel(t);
        }
        let ConnState::Publishing(p) = &mut conn.state else {
            return;
        };
        if !may_send {
            debug!("publish over HTTP waits for room in the queue to Redis");
            p.stage = Stage::Waiting;
            return self.publishes_waiting.push(key);
        }
        p.stage = Stage::Committing;
        let body = std::mem::take(&mut p.body);
        let (format, grant) = (p.plan.format, &p.plan.grant);
        let answers = &mut p.answers;
        let max_topics = self.config.streams.max_topics;
        let max_line = self.config.ingest.max_event_bytes;
        let at = Publishing {
            wall_us: self.wall_us,
            sender: Sender::Http(key),
        };
        let (hub, commit, to_fan_out, stats) = (
            &mut self.hub,
            &mut self.commit,
            &mut self.to_fan_out,
            &mut self.stats,
        );
        let mut one = |bytes: &[u8], answers: &mut ingest::Answers| {
            match InputLine::of(bytes, max_line).decode(max_line, max_topics) {
                Ok(Line::Blank) => {
                    // One event is expected of a JSON or form body.
                    if format != Format::Ndjson {
                        stats.ingest_errors += 1;
                        answers.error("empty body: one event expected");
                    }
                }
                Ok(Line::Publish(event)) => match grant.uncovered(&event.topics) {
                    Some(topic) => {
                        stats.ingest_errors += 1;
                        answers.error(&format!("{} {topic:?}", http_publish::NOT_COVERED));
                    }
                    None => publish(event, at, hub, commit, to_fan_out, stats, answers),
                },
                Ok(Line::Admin(_)) => {
                    stats.ingest_errors += 1;
                    answers.error("admin commands are taken on the ingest socket only");
                }
                Err(e) => {
                    stats.ingest_errors += 1;
                    answers.error(&e.0);
                }
            }
        };
        match format {
            Format::Ndjson => {
                // The socket's line rules: split at `\n`; a last line without one counts
                // (blank lines get no answer).
                let lines = body.strip_suffix(b"\n").unwrap_or(&body);
                for l in lines.split(|&b| b == b'\n') {
                    one(l, answers);
                }
            }
            Format::Json => one(&body, answers),
            Format::Form => match body::form_to_line(&body) {
                Ok(l) => one(&l, answers),
                Err(reason) => {
                    stats.ingest_errors += 1;
                    answers.error(&reason);
                }
            },
        }
        self.publishing.push(key);
        self.end_batch(Sender::Http(key));
        self.finish_publish(key);
        self.fan_out_committed();
    }

    /// Cluster mode: room in the queue to Redis again; the bodies that waited for it are
    /// published, in the order they completed.
    pub(super) fn run_waiting_publishes(&mut self) {
        for key in std::mem::take(&mut self.publishes_waiting) {
            let waiting = self.streams.get(key).is_some_and(
                |c| matches!(&c.state, ConnState::Publishing(p) if p.stage == Stage::Waiting),
            );
            if waiting {
                self.run_publish(key);
            }
        }
    }

    /// Once every event of the publish is answered: its HTTP answer is queued and the
    /// connection goes back to reading requests (the pipelined rest first, once the answer
    /// is written).
    pub(super) fn finish_publish(&mut self, key: u32) {
        let Some(conn) = self.streams.get_mut(key) else {
            return self.publishing.retain(|&k| k != key);
        };
        let ConnState::Publishing(p) = &mut conn.state else {
            return self.publishing.retain(|&k| k != key);
        };
        if p.answers.held() > 0 {
            return;
        }
        self.publishing.retain(|&k| k != key);
        let (ok, errors) = p.answers.take_counts();
        let lines = p.answers.take_ready();
        let after = p.plan.after;
        let (status, bytes) = http_answer(p.plan.format, &lines, after);
        let input = std::mem::take(&mut p.input);
        conn.state = ConnState::Reading { buf: input };
        let publishes = &mut self.stats.publishes;
        publishes.http_ok += ok;
        publishes.http_error += errors;
        publishes.requests.count(status);
        if status >= 400 {
            self.stats.rejected.count(status);
        }
        // The next request (or an idle keep-alive connection) has `http.request_timeout`;
        // the timer was cancelled while the events were committed.
        let deadline = self.now + self.request_timeout();
        self.streams
            .arm_no_later_than(key, deadline, &mut self.wheel);
        self.streams
            .queue(key, bytes.into(), after == After::Close, self.now);
    }
}

/// The HTTP answer to a publish whose answer lines (the ingest socket's) are `lines`: its
/// status and bytes. NDJSON: `200` with the lines. JSON: the one answer object, with a
/// status that fits it. Form: `200` with the id as text, or the reason with its status.
fn http_answer(format: Format, lines: &[u8], after: After) -> (u16, Vec<u8>) {
    if format == Format::Ndjson {
        let bytes = response::with_body(200, "application/x-ndjson", lines, after, false);
        return (200, bytes);
    }
    let first = lines.split(|&b| b == b'\n').next().unwrap_or_default();
    // The answer lines were written by `ingest::Answers`: UTF-8.
    let answer = line::read_answer(std::str::from_utf8(first).unwrap_or_default());
    let status = match &answer {
        Ok(_) => 200,
        Err(reason) => http_publish::status_of(reason),
    };
    let bytes = match (format, answer) {
        (Format::Form, Ok(id)) => response::with_body(
            200,
            "text/plain; charset=utf-8",
            id.as_bytes(),
            after,
            false,
        ),
        (Format::Form, Err(reason)) => response::plain(status, &reason, after, &[], false),
        _ => response::with_body(status, "application/json", first, after, false),
    };
    (status, bytes)
}
