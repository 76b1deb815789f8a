//! Cluster mode (protocol 7): several ssehub processes share one ordered event stream kept in
//! Redis Streams. This module owns the link to Redis: a writer thread that runs producers'
//! publishes through the `ssehub` Redis Function (which assigns the id), and a reader
//! thread that reads the stream back (`XRANGE` at start-up, then `XREAD BLOCK`) and checks
//! that every entry follows the one before it. Both report to the loop through a queue and
//! the loop's `mio::Waker`; subscriber and producer sockets never leave the loop thread.
//!
//! # In Redis (all keys share the `{ev}` hash tag)
//! - `<prefix>:{ev}`: the stream; entry id `<id>-0`, fields `p` (previous id), `t` (topics,
//!   separated by one space: topic names never hold one), `e` (event type, absent when
//!   none), `d` (data), `f` (`1` when final), `m` (published, Unix ms of Redis's clock),
//!   `x` (the epoch).
//! - `<prefix>:{ev}:last`: the last id issued (raised on every connect to the highest id
//!   this node has seen, so new ids exceed anything any node delivered).
//! - `<prefix>:{ev}:epoch`: names the data set; created (`SET NX`) by the first connect
//!   that finds none, so an emptied or replaced data set has a new one.
//! - `<prefix>:{ev}:final:<topic>`: final marks, expiring after `history.max_age`.
//! - `<prefix>:{ev}:key:<key>`: producers' idempotency keys → id, same expiry.
//!
//! # The loop's side
//! `submit` queues a publish and returns its sequence number; `flush` (once per turn)
//! hands the queued publishes to the writer as one batch (one `FCALL` per up to 1,000);
//! `poll` (after a wake-up, until `None`) yields what the threads reported, in order.
//!
//! # Threads and what they promise
//! - `writer` answers every publish exactly once, `Answered` reports ascending by sequence
//!   number across reports. While the link is not up (also before the first `Up`), `flush`
//!   refuses at once (`not stored: redis unavailable: <reason>`) rather than queue.
//! - `reader` reads from the first replica of `read_from` that is in sync, else from the
//!   primary (where it goes back to its replicas every 10 s); with `min_replicas` it
//!   delivers an entry only once that many replicas hold it.
//! - `reader` sends the start-up fill's `Entries`, then `Started` once, then `Entries` and
//!   `Gap`s in stream order; a `Gap` comes before the entries it concerns. It waits while the queue holds more than
//!   `shared::MAX_QUEUED_ENTRIES` entries, so a slow loop slows reading, not memory.
//! - `Up`/`Down` come from `shared`, once per change; `Down` also when the very first
//!   connect fails. Answers and entries are not ordered against each other (a publish's
//!   entry may be polled before or after its answer).
//! - `probe` looks once a second which server the URL leads to, and makes a side whose
//!   connection is on another one reconnect.
//! - `connection` opens sockets (timeouts, backoff), `keys` and `function.lua` are the
//!   Redis side's names and Function, `reply` reads what Redis sends, never panicking.

mod connection;
mod keys;
mod probe;
mod reader;
mod reply;
mod shared;
mod writer;

#[cfg(test)]
mod tests;

use shared::Shared;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The most publishes the loop may have submitted and not yet seen answered
/// (`Link::in_flight`): at this many it stops reading producers, so the writer's queue
/// never grows without bound.
pub const MAX_IN_FLIGHT: usize = 65_536;

/// How long dropping a `Link` waits for its threads before leaving them to finish alone.
const JOIN_WAIT: Duration = Duration::from_secs(2);

/// This node's clock, Unix µs: new ids are never below it (`keys::Stamp`), and a gap
/// forgets at least up to it (`Reader::forget_mark`).
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

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
    /// `cluster.read_from`: replicas the reader reads from (the first that answers and
    /// is in sync), before falling back to `url`.
    pub read_from: Vec<String>,
    /// `cluster.read_linger`: after a read that carried entries (and fewer than a page),
    /// the reader waits this long before the next, so that reads carry more entries.
    pub read_linger: Duration,
    /// `cluster.write_linger`: the writer waits this long after the first publish of a
    /// call for more to join it (fewer, larger calls at high rates).
    pub write_linger: Duration,
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
    /// The first successful read at start-up is complete: the entries of the history
    /// window came before it. Sent once. `remembers_from`: the first id the stream still
    /// holds (or `last_id` when it holds none, or Redis's clock on an empty data set);
    /// `last_id`: the last id Redis issued. Until it, the node has nothing to plan a stream
    /// against.
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
    shared: Arc<Shared>,
    /// To the writer; `None` once dropping.
    batches: Option<Sender<writer::Batch>>,
    /// Submitted since the last `flush`.
    pending: Vec<(u64, PublishRequest)>,
    /// Sequence numbers handed out so far (the last one).
    submitted: u64,
    /// Answers `poll` has returned so far.
    answered: u64,
    threads: Vec<JoinHandle<()>>,
}

impl Link {
    /// Starts the writer and reader threads; they connect in the background and report
    /// through `waker`. Entries are read from the stream start-up position (see `Started`).
    /// `Err` (`InvalidInput`) when `options.url` is not a Redis URL.
    pub fn start(options: Options, waker: Arc<mio::Waker>) -> std::io::Result<Link> {
        let invalid = |e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let client = connection::client(&options.url).map_err(invalid)?;
        let mut sources = Vec::with_capacity(options.read_from.len() + 1);
        for url in &options.read_from {
            sources.push(reader::Source::replica(
                url,
                connection::client(url).map_err(invalid)?,
            ));
        }
        sources.push(reader::Source::primary(&options.url, client.clone()));
        let shared = Arc::new(Shared::new(options, waker));
        let mut rng = crate::rng::Rng::seeded();
        let mut fork = || crate::rng::Rng::new(rng.next_u64());
        let (batches, batch_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(3);
        let writer = writer::Writer::new(
            shared.clone(),
            client.clone(),
            connection::Backoff::new(fork()),
            fork(),
        );
        let reader = reader::Reader::new(
            shared.clone(),
            sources,
            connection::Backoff::new(fork()),
            fork(),
        );
        let probe_shared = shared.clone();
        let spawned = thread::Builder::new()
            .name("ssehub-redis-w".into())
            .spawn(move || writer.run(batch_rx))
            .and_then(|w| {
                threads.push(w);
                thread::Builder::new()
                    .name("ssehub-redis-p".into())
                    .spawn(move || probe::run(probe_shared, client))
            })
            .and_then(|p| {
                threads.push(p);
                thread::Builder::new()
                    .name("ssehub-redis-r".into())
                    .spawn(move || reader.run())
            });
        let mut link = Link {
            shared,
            batches: Some(batches),
            pending: Vec::new(),
            submitted: 0,
            answered: 0,
            threads,
        };
        // On failure dropping `link` stops the writer that did start.
        link.threads.push(spawned?);
        Ok(link)
    }

    /// Queues a publish; returns its sequence number (1, 2, 3, … in submission order).
    /// The loop keeps `in_flight()` near `MAX_IN_FLIGHT` at most (it stops reading
    /// producers); the link itself does not refuse (a small overshoot only costs memory).
    pub fn submit(&mut self, request: PublishRequest) -> u64 {
        self.submitted += 1;
        self.pending.push((self.submitted, request));
        self.submitted
    }

    /// Hands what was submitted since the last call to the writer (at most one pipeline and
    /// one `WAIT`: batches that queue while the writer is busy go out together). Call once
    /// per loop turn, after reading the producers.
    ///
    /// While the link is down and the writer holds nothing, the publishes are refused here
    /// at once (`not stored: redis unavailable: …`, through `poll` like every answer).
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let n = batch.len();
        let writer_idle = self.shared.writer_pending.load(Ordering::SeqCst) == 0;
        if !self.shared.is_up() && writer_idle {
            let why = format!(
                "not stored: redis unavailable: {}",
                self.shared.down_reason()
            );
            let answers = batch.into_iter().map(|(seq, _)| (seq, Err(why.clone())));
            self.shared.push(Report::Answered(answers.collect()));
            return;
        }
        self.shared.writer_pending.fetch_add(n, Ordering::SeqCst);
        let sent = self.batches.as_ref().map(|tx| tx.send(batch));
        if let Some(Err(mpsc::SendError(batch))) = sent {
            // The writer thread is gone (it only ends at drop, or by a panic).
            self.shared.writer_pending.fetch_sub(n, Ordering::SeqCst);
            let why = "not stored: redis unavailable: writer thread gone".to_string();
            let answers = batch.into_iter().map(|(seq, _)| (seq, Err(why.clone())));
            self.shared.push(Report::Answered(answers.collect()));
        }
    }

    /// Publishes submitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        (self.submitted - self.answered) as usize
    }

    /// The next report of the threads, if any (call until `None` after a wake-up).
    pub fn poll(&mut self) -> Option<Report> {
        let report = self.shared.pop()?;
        if let Report::Answered(answers) = &report {
            self.answered += answers.len() as u64;
        }
        Some(report)
    }

    /// Reads that reached the end of the stream so far. When it has grown since a moment
    /// and the loop has polled every report, the node has read every entry that existed
    /// then: a resume id it still has not read is not in the stream.
    pub fn tail_reads(&self) -> u64 {
        self.shared.tail_reads.load(Ordering::SeqCst)
    }

    /// A stream request waits for an id this node has not read: a reader on a replica
    /// then finds out where the primary's stream ends, so that `tail_reads` grows only
    /// once the node has read up to there (a replica's own end may be behind).
    pub fn want_tail(&self) {
        self.shared.tail_wanted.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether the reader reads from a replica of `cluster.read_from` now
    /// (`ssehub_redis_reading_replica`).
    pub fn reads_from_replica(&self) -> bool {
        self.shared.on_replica.load(Ordering::SeqCst)
    }

    /// Why the link is not up (its latest failure).
    pub fn down_reason(&self) -> String {
        self.shared.down_reason()
    }

    /// Whether both connections work now (`ssehub_redis_up`).
    pub fn is_up(&self) -> bool {
        self.shared.is_up()
    }

    /// Failed connects, lost connections, timeouts and protocol errors since start
    /// (`ssehub_redis_errors_total`).
    pub fn errors_total(&self) -> u64 {
        self.shared.errors_total()
    }
}

impl Drop for Link {
    /// Stops the threads: the writer ends when its channel closes, the reader within one
    /// `XREAD BLOCK` (1 s), the probe within its sleep. Waits up to 2 s; a thread still inside a blocking call then
    /// (a connect or a reply that takes its full timeout) is left to end alone: it only
    /// holds its connection and the shared state.
    fn drop(&mut self) {
        self.shared.shut_down();
        self.batches = None;
        let deadline = Instant::now() + JOIN_WAIT;
        while Instant::now() < deadline && !self.threads.iter().all(|t| t.is_finished()) {
            thread::sleep(Duration::from_millis(5));
        }
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            } else {
                log::debug!(
                    "cluster: {:?} still busy at shutdown; detached",
                    t.thread().name()
                );
            }
        }
    }
}
