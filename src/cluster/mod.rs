//! Cluster mode (SPEC 7): several ssehub processes share one ordered event stream kept in
//! Redis Streams. This module owns the link to Redis: a writer thread that runs producers'
//! publishes through the `ssehub` Redis Function (which assigns the id), and a reader
//! thread that reads the stream back (`XRANGE` at start-up, then `XREAD BLOCK`) and checks
//! that every entry follows the one before it. Both report to the loop through a queue and
//! the loop's `mio::Waker`; subscriber and producer sockets never leave the loop thread.
//!
//! # In Redis (all keys share the `{ev}` hash tag)
//! - `<prefix>:{ev}`: the stream; entry id `<id>-0`, fields `p` (previous id), `t` (topics,
//!   separated by one space: topic names never hold one), `e` (event type, absent when
//!   none), `d` (data), `f` (`1` when final), `m` (published, Unix ms of Redis's clock).
//! - `<prefix>:{ev}:last`: the last id issued (raised on every connect to the highest id
//!   this node has seen, so new ids exceed anything any node delivered).
//! - `<prefix>:{ev}:final:<topic>`: final marks, expiring after `history.max_age`.
//! - `<prefix>:{ev}:key:<key>`: producers' idempotency keys → id, same expiry.
//!
//! # The loop's side
//! `submit` queues a publish and returns its sequence number; `flush` (once per turn)
//! hands the queued publishes to the writer as one pipeline; `poll` (after a wake-up, until
//! `None`) yields what the threads reported, in order.

use std::sync::Arc;
use std::time::Duration;

/// What the link needs from the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// `redis://host:port/db`, `rediss://…` (TLS) or `redis+unix:///path`.
    pub url: String,
    pub key_prefix: String,
    /// `WAIT` for this many replicas before answering `ok` (0: no `WAIT`).
    pub min_replicas: u32,
    pub replica_timeout: Duration,
    pub connect_timeout: Duration,
    /// `history.max_age`: the stream is trimmed past it (`MINID ~`); final marks and
    /// idempotency keys expire after it.
    pub max_age: Duration,
    /// `history.max_stream_events`: `MAXLEN ~` of the stream (0: none).
    pub max_stream_events: u64,
}

/// One publish for the writer (already validated by `ingest::line`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub topics: Vec<Box<str>>,
    pub event: Option<Box<str>>,
    pub data: Box<str>,
    pub is_final: bool,
    /// The producer's idempotency key (`"key"` on the ingest line).
    pub key: Option<Box<str>>,
}

/// One entry read back from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    /// The id of the entry before it (field `p`).
    pub prev: u64,
    pub published_unix_ms: u64,
    pub topics: Vec<Box<str>>,
    pub event: Option<Box<str>>,
    pub data: Box<str>,
    pub is_final: bool,
}

/// What the link's threads report, in the order they happened.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// Answers to submitted publishes, ascending by sequence number, each exactly once:
    /// `Ok(id)`, or `Err(reason)` with the whole one-line reason for the producer
    /// (`topic X is final`, `not stored: redis unavailable: …`, `not confirmed: …`).
    Answered(Vec<(u64, Result<u64, String>)>),
    /// The first successful read at start-up: this node's history starts here. Sent once,
    /// before the first `Entries`. `remembers_from`: the first id the stream still holds
    /// (or `last_id` when it holds none); `last_id`: the last id Redis issued.
    Started { remembers_from: u64, last_id: u64 },
    /// Entries in stream order, each following the one before (checked), ids increasing.
    Entries(Vec<Entry>),
    /// This node may have missed entries (its last entry is gone from the stream or no
    /// longer follows the one before it, or an entry's previous id is not the node's last:
    /// Redis restarted empty, failed over to a lagging replica, or trimmed past a paused
    /// node). Resumes from below `forget_up_to` cannot be proven complete. Entries after
    /// it follow in later reports.
    Gap { forget_up_to: u64, why: String },
    /// Both connections work (after start-up or after an outage).
    Up,
    /// Redis became unreachable (`reason` for the log line and `STATUS=`).
    Down(String),
}

/// The loop's handle on the writer and reader threads.
pub struct Link {
    _options: Arc<Options>,
}

impl Link {
    /// Starts the writer and reader threads; they connect in the background and report
    /// through `waker`. Entries are read from the stream start-up position (see `Started`).
    pub fn start(options: Options, waker: Arc<mio::Waker>) -> std::io::Result<Link> {
        let _ = waker;
        Ok(Link {
            _options: Arc::new(options),
        })
    }

    /// Queues a publish; returns its sequence number (1, 2, 3, … in submission order).
    pub fn submit(&mut self, request: PublishRequest) -> u64 {
        let _ = request;
        0
    }

    /// Hands what was submitted since the last call to the writer (one pipeline, one
    /// `WAIT`). Call once per loop turn, after reading the producers.
    pub fn flush(&mut self) {}

    /// Publishes submitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        0
    }

    /// The next report of the threads, if any (call until `None` after a wake-up).
    pub fn poll(&mut self) -> Option<Report> {
        None
    }

    /// Whether both connections work now (`ssehub_redis_up`).
    pub fn is_up(&self) -> bool {
        false
    }

    /// Failed connects, lost connections, timeouts and protocol errors since start
    /// (`ssehub_redis_errors_total`).
    pub fn errors_total(&self) -> u64 {
        0
    }
}
