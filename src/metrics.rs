//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4) of the hub's
//! gauges and counters, and the publish-to-write latency histogram behind it. Owns the
//! latency recorder and the rendering; never touches a socket. Base units throughout
//! (seconds, bytes), counters end in `_total`.

use crate::http::response::After;
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::time::Instant;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latencies above this are recorded as this (µs): a stream whose output waits longer is
/// cut off by `streams.write_timeout` long before.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Recently committed events remembered for the latency lookup (id, commit time): those
/// a queued write can still be waiting for, that is of the last `streams.write_timeout`
/// (`set_horizon`; a queue older than that has been cut off) but no more than
/// `MAX_LATENCY_US`, and at most this many. Bounded by age first, so that the ring's size
/// follows the event rate: bounded by count alone it kept growing for 16,384 events (5.5
/// minutes at 50 events/s, hours at a few per second), which under steady load looked
/// like a leak (issue 14).
const COMMIT_RING: usize = 16_384;
/// Quantiles reported in the summary.
const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];
/// Statuses always listed in `ssehub_rejected_requests_total` (zero until seen), so a
/// rate() over them works from the first scrape.
const COMMON_REJECTS: [u16; 9] = [400, 401, 403, 404, 405, 414, 429, 431, 503];

/// Publish-to-write latency: from the moment an event is committed (in history and
/// durable: when it may reach streams) to the moment a stream's write that carried it
/// completes. One sample per write that empties a stream's queue of live events, taken
/// for the newest event in it (with single events per write, as in a fan-out, that is
/// one sample per delivery). Quantiles cover the last one to two minutes (two rotating
/// windows); `_sum` and `_count` cover the whole run.
pub struct Latency {
    origin: Instant,
    windows: [Histogram<u64>; 2],
    current: usize,
    sum_us: u64,
    count: u64,
    /// (event id, commit time in µs since `origin`), ids increasing.
    commits: VecDeque<(u64, u64)>,
    /// Commits older than this (µs) are forgotten.
    horizon_us: u64,
    /// The last commit `written` looked up (consecutive writes of a sweep carry the same
    /// event): (id, commit time), id 0 when none.
    last_found: (u64, u64),
    /// The clock reading the writes of one slice of the sweep share (0: not read yet), so
    /// the clock is read once per slice, not once per write; a sample is then early by at
    /// most one slice (`conn::table::CONNS_PER_SLICE` writes).
    slice_now_us: u64,
}

impl Default for Latency {
    fn default() -> Self {
        let window = || {
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static histogram bounds are valid")
        };
        Latency {
            origin: Instant::now(),
            windows: [window(), window()],
            current: 0,
            sum_us: 0,
            count: 0,
            commits: VecDeque::new(),
            horizon_us: MAX_LATENCY_US,
            last_found: (0, 0),
            slice_now_us: 0,
        }
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latency")
            .field("count", &self.count)
            .field("sum_us", &self.sum_us)
            .finish()
    }
}

impl Latency {
    /// Microseconds since this recorder was made (a measurement, not loop logic: the loop's
    /// own clock is read once per turn and is too coarse for this).
    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    /// Measure from `origin`, the instant the loop's millisecond clock counts from, so that
    /// commit times compare exactly with the queue times `written` is given.
    pub fn set_origin(&mut self, origin: Instant) {
        self.origin = origin;
        self.commits.clear();
        self.last_found = (0, 0);
    }

    /// How long a commit is remembered: `streams.write_timeout` (no queue waits longer
    /// without being cut off), at most `MAX_LATENCY_US`.
    pub fn set_horizon(&mut self, write_timeout: std::time::Duration) {
        self.horizon_us = (write_timeout.as_micros() as u64).clamp(1, MAX_LATENCY_US);
    }

    /// A new slice of writes begins: the next sample reads the clock again.
    pub fn new_slice(&mut self) {
        self.slice_now_us = 0;
    }

    fn slice_now(&mut self) -> u64 {
        if self.slice_now_us == 0 {
            self.slice_now_us = self.now_us().max(1);
        }
        self.slice_now_us
    }

    /// Event `id` was committed just now.
    pub fn committed(&mut self, id: u64) {
        self.slice_now_us = 0;
        let now = self.now_us();
        let oldest = now.saturating_sub(self.horizon_us);
        while self.commits.len() >= COMMIT_RING
            || self.commits.front().is_some_and(|&(_, t)| t < oldest)
        {
            if self
                .commits
                .pop_front()
                .is_some_and(|(gone, _)| gone == self.last_found.0)
            {
                self.last_found = (0, 0);
            }
        }
        self.commits.push_back((id, now));
    }

    /// A stream's queue, non-empty since `queued_since_ms` (loop milliseconds since start),
    /// was fully written; `cursor` is the newest event queued to it. Recorded only when
    /// that event was committed while the queue existed (so a keepalive or a stream head
    /// written long after the stream's last event is not taken for a late delivery), and
    /// only while its commit is still remembered.
    pub fn written(&mut self, cursor: u64, queued_since_ms: u64) {
        if cursor == 0 {
            return;
        }
        let committed = if self.last_found.0 == cursor {
            self.last_found.1
        } else {
            let Ok(i) = self.commits.binary_search_by_key(&cursor, |&(id, _)| id) else {
                return;
            };
            self.last_found = self.commits[i];
            self.last_found.1
        };
        if committed < queued_since_ms.saturating_mul(1000) {
            return;
        }
        let latency = self.slice_now().saturating_sub(committed).max(1);
        self.windows[self.current].saturating_record(latency);
        self.sum_us = self.sum_us.saturating_add(latency);
        self.count += 1;
    }

    /// Starts a new quantile window, dropping the oldest.
    pub fn rotate(&mut self) {
        self.current ^= 1;
        self.windows[self.current].reset();
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// (quantile, seconds) over both windows; NaN when there were no samples.
    fn quantiles(&self) -> Vec<(f64, f64)> {
        let mut merged = self.windows[self.current].clone();
        // Same bounds on both: adding cannot fail.
        let _ = merged.add(&self.windows[self.current ^ 1]);
        QUANTILES
            .iter()
            .map(|&q| {
                let v = if merged.is_empty() {
                    f64::NAN
                } else {
                    merged.value_at_quantile(q) as f64 / 1e6
                };
                (q, v)
            })
            .collect()
    }
}

/// Answers counted by status: the requests answered with an error status
/// (`ssehub_rejected_requests_total`), and `POST /publish` answers
/// (`ssehub_publish_requests_total`).
#[derive(Debug, Default, Clone)]
pub struct ByStatus(BTreeMap<u16, u64>);

impl ByStatus {
    pub fn count(&mut self, status: u16) {
        *self.0.entry(status).or_default() += 1;
    }

    pub fn get(&self, status: u16) -> u64 {
        self.0.get(&status).copied().unwrap_or(0)
    }

    /// `{status="N"}` samples in status order: every status seen, and each of `always`
    /// (zero until seen, so a rate() over them works from the first scrape).
    fn samples(&self, always: &[u16]) -> Vec<(String, String)> {
        let mut statuses: Vec<u16> = always.to_vec();
        statuses.extend(self.0.keys().filter(|k| !always.contains(k)));
        statuses.sort_unstable();
        statuses
            .iter()
            .map(|&st| (format!("{{status=\"{st}\"}}"), self.get(st).to_string()))
            .collect()
    }
}

/// Publishes by transport and outcome (`ssehub_publishes_total`), and `POST /publish`
/// answers by status (`ssehub_publish_requests_total`).
#[derive(Debug, Default, Clone)]
pub struct Publishes {
    pub socket_ok: u64,
    pub socket_error: u64,
    pub http_ok: u64,
    pub http_error: u64,
    pub requests: ByStatus,
}

/// Why a stream was cut off (protocol 2.3), the `reason` label of
/// `ssehub_slow_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// Queuing the next live event would pass `streams.max_pending_bytes`.
    Pending,
    /// Queued output was not fully written within `streams.write_timeout`.
    WriteTimeout,
    /// The kernel gave up on the connection (`ETIMEDOUT` on a read or write of a stream):
    /// `TCP_USER_TIMEOUT` (from `streams.write_timeout`) passed with sent data
    /// unacknowledged or the peer's window shut, i.e. the peer made no progress at all.
    PeerTimeout,
}

/// Streams cut off, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cuts {
    pub pending: u64,
    pub write_timeout: u64,
    pub peer_timeout: u64,
}

impl Cuts {
    pub fn count(&mut self, reason: CutReason) {
        match reason {
            CutReason::Pending => self.pending += 1,
            CutReason::WriteTimeout => self.write_timeout += 1,
            CutReason::PeerTimeout => self.peer_timeout += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.pending + self.write_timeout + self.peer_timeout
    }
}

/// Counters for logs and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: u64,
    pub streams_opened: u64,
    pub events_published: u64,
    pub deliveries: u64,
    /// Streams cut off (slow or vanished subscribers), by reason.
    pub slow_disconnects: Cuts,
    /// Cuts not yet reported in a log line.
    pub slow_unreported: Cuts,
    pub ingest_errors: u64,
    /// Bytes written to HTTP clients.
    pub bytes_written: u64,
    /// Write calls to HTTP clients (`write`/`writev`; a TLS round counts one).
    pub writes: u64,
    /// Retained events queued to resuming streams.
    pub events_replayed: u64,
    /// Answers with an error status, by status.
    pub rejected: ByStatus,
    /// Publishes by transport and outcome; `POST /publish` answers by status.
    pub publishes: Publishes,
    /// Publish-to-write latency.
    pub latency: Latency,
    /// Calls of `heap::release_free_memory` and the nanoseconds they took.
    pub heap_trims: u64,
    pub heap_trim_ns: u64,
}

/// Everything `/metrics` shows, read from the loop at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub conns_reading: u64,
    pub conns_streaming: u64,
    pub conns_lingering: u64,
    /// Connections reading a `POST /publish` body or waiting for its events' commit.
    pub conns_publishing: u64,
    /// Publishes by transport and outcome, and `POST /publish` answers by status.
    pub publishes: Publishes,
    pub producers: u64,
    pub topics: u64,
    pub max_connections: u64,
    pub accepted: u64,
    pub streams_opened: u64,
    pub events_published: u64,
    pub events_delivered: u64,
    pub events_replayed: u64,
    pub bytes_written: u64,
    pub writes: u64,
    pub slow_disconnects: Cuts,
    pub ingest_errors: u64,
    pub history_events: u64,
    pub history_bytes: u64,
    pub subscribed_topic_bytes: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub start_time_unix_s: f64,
    /// Cluster mode: whether Redis is reachable now, its errors since start, and whether
    /// the reader reads from a replica of `cluster.read_from`.
    pub redis: Option<(bool, u64, bool)>,
    /// Times free heap memory was given back to the kernel, and the time it took.
    pub heap_trims: u64,
    pub heap_trim_ns: u64,
}

/// Renders the exposition text.
pub fn render(s: &Snapshot, rejected: &ByStatus, latency: &Latency) -> String {
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| [("", v.to_string())];
    family(
        "ssehub_build_info",
        "gauge",
        "Always 1; the version is a label.",
        &[(
            &format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
            "1".into(),
        )],
    );
    family(
        "ssehub_start_time_seconds",
        "gauge",
        "Unix time the process started, in seconds.",
        &[("", format!("{:.3}", s.start_time_unix_s))],
    );
    family(
        "ssehub_connections",
        "gauge",
        "Open HTTP connections by state (reading a request, streaming, lingering before close).",
        &[
            ("{state=\"reading\"}", s.conns_reading.to_string()),
            ("{state=\"streaming\"}", s.conns_streaming.to_string()),
            ("{state=\"lingering\"}", s.conns_lingering.to_string()),
            ("{state=\"publishing\"}", s.conns_publishing.to_string()),
        ],
    );
    family(
        "ssehub_max_connections",
        "gauge",
        "The HTTP connection cap in force.",
        &one(s.max_connections),
    );
    family(
        "ssehub_streams",
        "gauge",
        "Open event streams.",
        &one(s.conns_streaming),
    );
    family(
        "ssehub_producers",
        "gauge",
        "Producers connected to the ingest socket.",
        &one(s.producers),
    );
    family(
        "ssehub_topics",
        "gauge",
        "Topics the hub knows (subscribed, retained or remembered).",
        &one(s.topics),
    );
    family(
        "ssehub_connections_accepted_total",
        "counter",
        "HTTP connections accepted.",
        &one(s.accepted),
    );
    family(
        "ssehub_streams_opened_total",
        "counter",
        "Event streams opened (200 answers on /events).",
        &one(s.streams_opened),
    );
    family(
        "ssehub_events_published_total",
        "counter",
        "Events accepted from producers and committed to history.",
        &one(s.events_published),
    );
    family(
        "ssehub_events_delivered_total",
        "counter",
        "Live events queued to streams (one per stream per event).",
        &one(s.events_delivered),
    );
    family(
        "ssehub_events_replayed_total",
        "counter",
        "Retained events queued to resuming streams from history.",
        &one(s.events_replayed),
    );
    family(
        "ssehub_writes_total",
        "counter",
        "Write calls to HTTP clients; events delivered per write show how much coalesced.",
        &one(s.writes),
    );
    family(
        "ssehub_heap_trims_total",
        "counter",
        "Times the loop gave the allocator's free pages back to the kernel (every 10 s).",
        &one(s.heap_trims),
    );
    family(
        "ssehub_heap_trim_seconds_total",
        "counter",
        "Time the loop spent giving free pages back to the kernel.",
        &[("", format!("{:.9}", s.heap_trim_ns as f64 / 1e9))],
    );
    family(
        "ssehub_bytes_written_total",
        "counter",
        "Bytes written to HTTP clients (heads, events, keepalives, answers).",
        &one(s.bytes_written),
    );
    family(
        "ssehub_slow_disconnects_total",
        "counter",
        "Streams cut off, by reason: pending (max_pending_bytes), write_timeout, peer_timeout (the kernel gave up: TCP_USER_TIMEOUT).",
        &[
            (
                "{reason=\"pending\"}",
                s.slow_disconnects.pending.to_string(),
            ),
            (
                "{reason=\"write_timeout\"}",
                s.slow_disconnects.write_timeout.to_string(),
            ),
            (
                "{reason=\"peer_timeout\"}",
                s.slow_disconnects.peer_timeout.to_string(),
            ),
        ],
    );
    let rejects = rejected.samples(&COMMON_REJECTS);
    let rejects: Vec<(&str, String)> = rejects
        .iter()
        .map(|(l, v)| (l.as_str(), v.clone()))
        .collect();
    family(
        "ssehub_rejected_requests_total",
        "counter",
        "HTTP requests answered with an error status, by status.",
        &rejects,
    );
    let p = &s.publishes;
    family(
        "ssehub_publishes_total",
        "counter",
        "Events submitted for publishing, by transport (socket: the ingest socket; http: POST /publish) and answer (ok, or error).",
        &[
            (
                "{transport=\"socket\",result=\"ok\"}",
                p.socket_ok.to_string(),
            ),
            (
                "{transport=\"socket\",result=\"error\"}",
                p.socket_error.to_string(),
            ),
            ("{transport=\"http\",result=\"ok\"}", p.http_ok.to_string()),
            (
                "{transport=\"http\",result=\"error\"}",
                p.http_error.to_string(),
            ),
        ],
    );
    let requests = p.requests.samples(&[200]);
    let requests: Vec<(&str, String)> = requests
        .iter()
        .map(|(l, v)| (l.as_str(), v.clone()))
        .collect();
    family(
        "ssehub_publish_requests_total",
        "counter",
        "POST /publish requests answered, by status.",
        &requests,
    );
    family(
        "ssehub_ingest_errors_total",
        "counter",
        "Ingest lines answered with an error.",
        &one(s.ingest_errors),
    );
    family(
        "ssehub_history_events",
        "gauge",
        "Events retained in history.",
        &one(s.history_events),
    );
    family(
        "ssehub_history_bytes",
        "gauge",
        "Bytes counted against history.max_bytes: retained events (frame plus bookkeeping) and the metadata of topics kept for their history (no subscriber).",
        &one(s.history_bytes),
    );
    family(
        "ssehub_subscribed_topic_bytes",
        "gauge",
        "Metadata of the topics streams hold (not in history.max_bytes; bounded by streams x streams.max_topics).",
        &one(s.subscribed_topic_bytes),
    );
    family(
        "ssehub_config_reloads_total",
        "counter",
        "Configuration reloads by result.",
        &[
            ("{result=\"ok\"}", s.reloads_ok.to_string()),
            ("{result=\"error\"}", s.reloads_failed.to_string()),
        ],
    );
    if let Some((up, errors, on_replica)) = s.redis {
        family(
            "ssehub_redis_up",
            "gauge",
            "Cluster mode: 1 while both connections to Redis work, else 0.",
            &one(u64::from(up)),
        );
        family(
            "ssehub_redis_errors_total",
            "counter",
            "Cluster mode: failed connects, lost connections, timeouts and protocol errors.",
            &one(errors),
        );
        family(
            "ssehub_redis_reading_replica",
            "gauge",
            "Cluster mode: 1 while the node reads the stream from a replica of cluster.read_from, 0 from the primary.",
            &one(u64::from(on_replica)),
        );
    }
    let name = "ssehub_publish_to_write_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} From an event's commit to the completed write that carried it to a \
         stream; quantiles over the last 1-2 minutes."
    );
    let _ = writeln!(out, "# TYPE {name} summary");
    for (q, v) in latency.quantiles() {
        let _ = writeln!(out, "{name}{{quantile=\"{q}\"}} {}", float(v));
    }
    let _ = writeln!(out, "{name}_sum {}", latency.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {}", latency.count);
    out
}

fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

/// The `200` answer carrying `body` (or only its head for `HEAD`).
pub fn http_response(body: &str, after: After, head_only: bool) -> Vec<u8> {
    ok_response(CONTENT_TYPE, body, after, head_only)
}

/// A `200` JSON answer (`/topics/NAME`), not cached.
pub fn json_response(body: &str, after: After, head_only: bool) -> Vec<u8> {
    ok_response("application/json", body, after, head_only)
}

fn ok_response(content_type: &str, body: &str, after: After, head_only: bool) -> Vec<u8> {
    crate::http::response::with_body(200, content_type, body.as_bytes(), after, head_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn every_family_has_help_and_type_and_counters_end_in_total() {
        let text = render(
            &Snapshot::default(),
            &ByStatus::default(),
            &Latency::default(),
        );
        let mut typed = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed += 1;
                let mut parts = rest.split(' ');
                let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
                assert!(text.contains(&format!("# HELP {name} ")), "{name}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
            } else if !line.starts_with('#') {
                assert!(line.starts_with("ssehub_"), "{line}");
            }
        }
        assert!(typed >= 18, "{text}");
        assert_eq!(
            value_of(
                &text,
                "ssehub_publish_to_write_latency_seconds{quantile=\"0.5\"}"
            ),
            Some("NaN")
        );
        assert_eq!(
            value_of(&text, "ssehub_rejected_requests_total{status=\"503\"}"),
            Some("0")
        );
    }

    #[test]
    fn latency_is_taken_for_events_committed_while_queued() {
        let mut l = Latency::default();
        l.committed(10);
        l.written(10, 0);
        assert_eq!(l.count(), 1);
        // A queue that started after the event was committed (a keepalive): not a sample.
        l.written(10, 3_600_000);
        // Unknown ids (never committed here, or long forgotten) are not samples either.
        l.written(11, 0);
        l.written(0, 0);
        assert_eq!(l.count(), 1);
        let text = render(&Snapshot::default(), &ByStatus::default(), &l);
        assert_eq!(
            value_of(&text, "ssehub_publish_to_write_latency_seconds_count"),
            Some("1")
        );
        let p50: f64 = value_of(
            &text,
            "ssehub_publish_to_write_latency_seconds{quantile=\"0.5\"}",
        )
        .unwrap()
        .parse()
        .unwrap();
        assert!(p50 > 0.0 && p50 < 1.0, "{p50}");
    }

    #[test]
    fn quantile_windows_rotate_out() {
        let mut l = Latency::default();
        l.committed(1);
        l.written(1, 0);
        l.rotate();
        assert!(!l.quantiles()[0].1.is_nan(), "previous window still counts");
        l.rotate();
        assert!(
            l.quantiles()[0].1.is_nan(),
            "two rotations later it is gone"
        );
        assert_eq!(l.count(), 1, "count is cumulative");
    }

    #[test]
    fn commit_ring_is_bounded() {
        let mut l = Latency::default();
        for id in 1..=(COMMIT_RING as u64 + 10) {
            l.committed(id);
        }
        assert_eq!(l.commits.len(), COMMIT_RING);
        l.written(5, 0);
        assert_eq!(l.count(), 0, "forgotten commit: no sample");
    }

    #[test]
    fn commit_ring_forgets_commits_older_than_the_horizon() {
        let mut l = Latency::default();
        l.set_horizon(std::time::Duration::from_millis(20));
        for id in 1..=100 {
            l.committed(id);
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        l.committed(101);
        assert_eq!(
            l.commits.len(),
            1,
            "only the commit within the horizon is kept"
        );
        l.written(50, 0);
        assert_eq!(l.count(), 0, "forgotten commit: no sample");
        l.written(101, 0);
        assert_eq!(l.count(), 1);
    }

    #[test]
    fn rejected_lists_common_statuses_and_others_seen() {
        let mut r = ByStatus::default();
        r.count(503);
        r.count(503);
        r.count(408);
        let text = render(&Snapshot::default(), &r, &Latency::default());
        assert_eq!(
            value_of(&text, "ssehub_rejected_requests_total{status=\"503\"}"),
            Some("2")
        );
        assert_eq!(
            value_of(&text, "ssehub_rejected_requests_total{status=\"408\"}"),
            Some("1")
        );
    }

    #[test]
    fn response_announces_the_exposition_format() {
        let r = http_response("a 1\n", After::KeepAlive { http10: false }, false);
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4"));
        assert!(r.contains("Content-Length: 4\r\n") && r.ends_with("\r\n\r\na 1\n"));
    }
}
