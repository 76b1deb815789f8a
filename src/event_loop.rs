//! The one event loop (protocol 1). Each turn: poll (timeout = next timer) → dispatch by
//! token → timers → commit → flush → reap, until a stop signal has drained every stream.
//! The loop owns the listeners, the poll, the timer wheel and one field per part:
//! `StreamTable` (every HTTP connection and its transitions), `Commit` (where accepted
//! events become committed), `Hub` (topics, ids, history), the producers, and `ops`.
//!
//! HTTP data path: accept → read head → parse (`http::request`) → route (policy: caps,
//! CORS, auth, resume plan) → the table starts the stream → fan-out of committed events
//! → flush/backpressure → keepalive/timeouts → close.
//! Ingest data path: accept → read → split lines → decode → accept (hub: id, encode once)
//! → submit (commit seam) → committed: history → fan-out → answer.
//!
//! What may block the thread, and why it is allowed: nothing on a socket (every socket is
//! non-blocking). The log's `write()` of a batch to the page cache runs here (bounded by
//! one read budget of input; fsync, meta writes and segment deletion run on the log's
//! helper thread), and a reload reads the configuration file (and a key or certificate
//! file) once, at an operator's request.

use crate::auth::Auth;
use crate::commit::{BatchEnd, Commit, Submitted, Synced};
use crate::config::{Config, Durability};
use crate::conn::table::{self, StreamTable};
use crate::conn::{ConnState, flags, tls};
pub use crate::due::{Due, OpsTimer};
use crate::history::{Limits, TopicId};
use crate::http::cors::Cors;
use crate::http::request::{self, Parsed, Request};
use crate::http::response::{self, After};
use crate::http::route::{self, Decision};
use crate::hub::Hub;
use crate::ingest::line::Publish;
use crate::ingest::line::{self, Line};
use crate::ingest::{self, Answers, BATCH_UNWRITTEN, InputLine, Producer};
use crate::limits::{ClientKey, Counted, PerClient};
use crate::log::{DirLock, Log, LogOptions, RecordRef};
pub use crate::metrics::Stats;
use crate::rng::Rng;
use crate::sse;
use crate::timer::{Millis, Wheel};
use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream, UnixListener};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod accept;
mod cluster;
mod ops;
use accept::{bind_http, descriptor_caps};
use cluster::{Parked, cluster_link};
use recovery::open_log;
mod http_publish;
mod producers;
mod recheck;
mod recovery;
mod requests;

const HTTP_LISTENER: Token = Token(usize::MAX - 1);
const INGEST_LISTENER: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);
const SIGNALS: Token = Token(usize::MAX - 5);
/// Producer tokens are `PRODUCER_BASE + key`; HTTP connection tokens are their slab key.
const PRODUCER_BASE: usize = 1 << 40;

/// Timer wheel resolution and size: 4 ms ticks, 4096 slots (a 16 s turn).
const TICK_MS: u64 = 4;
const WHEEL_SLOTS: usize = 4096;
/// Bytes read from one producer per turn before others get a go.
const INGEST_READ_PER_TURN: usize = 256 * 1024;
/// Connections accepted past `http.max_connections` with `overload_as_retry`, just long
/// enough to read their request (they use the descriptor reserve).
const OVERLOAD_SLOTS: usize = 32;
/// How often retained history is checked against `history.max_age`.
const PRUNE_EVERY_MS: Millis = 1_000;
/// Events evicted per pruning turn (~1–2 ms of freeing); the rest waits for the next tick.
const PRUNE_BUDGET: usize = 4_096;
/// How often free memory the allocator holds is given back to the kernel (`heap`).
const HEAP_TRIM_EVERY_MS: Millis = 10_000;
/// Pause before accepting again after running out of file descriptors.
const ACCEPT_RETRY_MS: Millis = 100;

/// Lets another thread (the signal handler) ask the loop to stop gracefully.
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

pub struct Server {
    poll: Poll,
    config: Config,
    http: Option<TcpListener>,
    ingest: Option<UnixListener>,
    ingest_path: PathBuf,
    /// Every HTTP connection and its per-stream state.
    streams: StreamTable,
    producers: Slab<Producer>,
    hub: Hub,
    wheel: Wheel<Due>,
    /// Producers with input possibly left unread (budget ran out or answers drained).
    producers_to_read: Vec<usize>,
    /// Cluster mode: producers not read while `commit::MAX_IN_FLIGHT` publishes wait.
    producers_waiting: Vec<usize>,
    /// Cluster mode: `POST /publish` bodies complete but held while the queue is full.
    publishes_waiting: Vec<u32>,
    /// HTTP connections whose `POST /publish` waits for its events' commit.
    publishing: Vec<u32>,
    /// Events committed whose fan-out waits until their producers' answers are written.
    to_fan_out: Vec<std::rc::Rc<crate::history::Event>>,
    /// Cluster mode: requests resuming from an id this node has not read yet.
    catching_up: Vec<Parked>,
    /// Cluster mode: the link's reader reported `Started` (the node has read Redis once);
    /// until then stream requests wait (protocol 7).
    cluster_ready: bool,
    /// Cluster mode: `Link::tail_reads` as read before the last drain of the link's queue.
    tail_reads_seen: u64,
    /// The last write or sync of the on-disk log failed (why), and none has succeeded
    /// since: `/readyz` says not ready.
    log_failing: Option<String>,
    scratch: Box<[u8]>,
    max_connections: usize,
    /// Producers connected at once (`ingest.max_producers`, or derived).
    max_producers: usize,
    accept_paused: bool,
    /// An out-of-descriptors episode was logged; cleared by the next accept that works.
    fd_shortage_logged: bool,
    started: Instant,
    /// The clock, read once per turn (`tick`) and passed down: loop milliseconds since
    /// start (timers) and Unix microseconds (ids, ages, token expiry).
    now: Millis,
    wall_us: u64,
    rng: Rng,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    draining_until: Option<Millis>,
    slow_summary_armed: bool,
    /// Where accepted events become committed: memory, or the on-disk log.
    commit: Commit,
    auth: Auth,
    cors: Cors,
    /// HTTPS on the HTTP listener when `[tls]` is configured.
    tls_config: Option<Arc<rustls::ServerConfig>>,
    per_client: PerClient,
    pub stats: Stats,
    /// systemd, admin listener, reload (`ops`).
    ops: ops::Ops,
    /// SIGTERM, SIGINT and SIGHUP, once `handle_signals` took them.
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// A SIGHUP arrived this turn: reload after the dispatch.
    reload_signalled: bool,
}

impl Server {
    /// Binds the HTTP listener and the ingest socket; nothing is accepted until `run`.
    pub fn bind(config: Config) -> io::Result<Server> {
        Server::bind_with(config, crate::listen_fds::Passed::default())
    }

    /// As `bind`, but takes the listeners systemd passed in (socket activation) instead of
    /// binding them; a kind not passed is bound from the configuration as usual.
    pub fn bind_with(config: Config, passed: crate::listen_fds::Passed) -> io::Result<Server> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let limits = Limits {
            max_events: config.history.max_events,
            max_age: config.history.max_age.as_millis() as Millis,
            max_bytes: config.history.max_bytes,
        };
        let mut hub = Hub::new(limits, 0, unix_micros());
        // Start-up order (issue 16): lock the data directory, bind the listeners, then
        // recover the log; so a second instance fails before its recovery changes anything.
        let dir_lock = match config.history.data_dir.as_os_str().is_empty() {
            true => None,
            false => Some(DirLock::acquire(&config.history.data_dir)?),
        };
        let auth = Auth::from_config(&config.auth)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let cors = Cors::new(&config.cors.allowed_origins, config.cors.allow_credentials);
        let per_client = PerClient::new(config.http.max_per_ip, &config.http.trusted_proxies);
        let tls_config = match &config.tls {
            Some(t) => Some(
                tls::server_config(&t.cert, &t.key)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            ),
            None => None,
        };
        let mut http = match passed.http {
            Some(l) => TcpListener::from_std(l),
            None => bind_http(config.http.listen, config.http.reuse_port)?,
        };
        // A socket passed in belongs to the socket unit: its file stays at exit.
        let owns_ingest_file = passed.ingest.is_none();
        let mut ingest = match passed.ingest {
            Some(l) => UnixListener::from_std(l),
            None => {
                let listener = ingest::bind(&config.ingest.socket, config.ingest.mode)?;
                if !config.ingest.group.is_empty() {
                    ingest::set_group(&config.ingest.socket, &config.ingest.group)?;
                }
                listener
            }
        };
        let mut admin = ops::admin_listener(&config, passed.admin)?;
        let link = match config.cluster.enabled() {
            true => Some(cluster_link(&config, waker.clone())?),
            false => None,
        };
        let log = match dir_lock {
            None => None,
            Some(lock) => match open_log(&config, lock, waker.clone(), &mut hub) {
                Ok(log) => Some(log),
                Err(e) => {
                    if owns_ingest_file {
                        let _ = std::fs::remove_file(&config.ingest.socket);
                    }
                    return Err(e);
                }
            },
        };
        poll.registry()
            .register(&mut http, HTTP_LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut ingest, INGEST_LISTENER, Interest::READABLE)?;
        if let Some(l) = &mut admin {
            poll.registry()
                .register(l, ops::ADMIN_LISTENER, Interest::READABLE)?;
        }
        let (max_connections, max_producers) = descriptor_caps(&config);
        let durability = config.history.durability;
        let started = Instant::now();
        let mut wheel = Wheel::new(TICK_MS, WHEEL_SLOTS, 0);
        wheel.insert(PRUNE_EVERY_MS, Due::PruneHistory);
        wheel.insert(HEAP_TRIM_EVERY_MS, Due::TrimHeap);
        Ok(Server {
            poll,
            ingest_path: config.ingest.socket.clone(),
            config,
            http: Some(http),
            ingest: Some(ingest),
            streams: StreamTable::default(),
            producers: Slab::new(),
            hub,
            commit: match link {
                Some(link) => Commit::remote(link),
                None => Commit::new(log, durability),
            },
            catching_up: Vec::new(),
            cluster_ready: false,
            tail_reads_seen: 0,
            log_failing: None,
            producers_waiting: Vec::new(),
            publishes_waiting: Vec::new(),
            publishing: Vec::new(),
            to_fan_out: Vec::new(),
            auth,
            cors,
            tls_config,
            per_client,
            wheel,
            producers_to_read: Vec::new(),
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
            max_connections,
            max_producers,
            accept_paused: false,
            fd_shortage_logged: false,
            started,
            now: 0,
            wall_us: unix_micros(),
            rng: Rng::seeded(),
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            draining_until: None,
            slow_summary_armed: false,
            stats: Stats::default(),
            ops: ops::Ops::new(admin, owns_ingest_file),
            signals: None,
            reload_signalled: false,
        })
    }

    pub fn http_addr(&self) -> io::Result<SocketAddr> {
        match &self.http {
            Some(l) => l.local_addr(),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    pub fn max_producers(&self) -> usize {
        self.max_producers
    }

    /// Takes the process's SIGTERM, SIGINT and SIGHUP onto the loop (the binary calls this;
    /// an embedding program keeps its own signals and uses `stop_handle`): the first two
    /// stop gracefully, SIGHUP reloads the configuration as `{"admin":"reload"}` does.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let mut signals =
            signal_hook_mio::v1_0::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// The signals that arrived: stop, or reload (protocol 2.3, 3.3).
    fn take_signals(&mut self) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        let arrived: Vec<i32> = signals.pending().collect();
        for signal in arrived {
            match signal {
                // Applied after this turn's dispatch, as a stop is.
                libc::SIGHUP => self.reload_signalled = true,
                _ => self.stop.store(true, Ordering::SeqCst),
            }
        }
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flag: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Runs until stopped and drained.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        self.tick();
        self.ops_ready();
        loop {
            // Sleep until the next timer (or not at all when output or input is left over).
            self.tick();
            let timeout = self.poll_timeout(self.now);
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(e);
            }
            // The turn's time: everything below sees this `now` and `wall_us`.
            self.tick();
            // Dispatch: accept, read request heads (route, answer, start streams), read
            // producers' lines (accept events, submit them to the commit seam).
            for event in events.iter() {
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                self.dispatch(event.token(), readable, event.is_writable());
            }
            self.read_producers_left_over();
            if std::mem::take(&mut self.reload_signalled) {
                self.reload_on_signal();
            }
            if self.stop.load(Ordering::SeqCst) && self.draining_until.is_none() {
                self.begin_drain();
            }
            // Timers: keepalives, timeouts, token expiry, history pruning, systemd.
            self.fire_timers();
            // Commit: batches the log's helper reported durable are committed and fanned
            // out, their answers released; one sync is asked for this turn's batches.
            self.poll_commit();
            self.poll_redis();
            self.resume_parked(true);
            // Every path that commits events fans them out before it returns
            // (`read_producer`, `deliver_committed`); this only makes sure nothing
            // committed can wait past the turn.
            self.fan_out_committed();
            self.commit.request_sync();
            // Flush every pending queue (bounded writes each), then close what ended.
            self.flush_pending();
            self.reap();
            if let Some(until) = self.draining_until
                && ((self.only_admin_left() && self.producers.is_empty()) || self.now >= until)
            {
                info!(
                    "stopped streams_left={} producers_left={}",
                    self.streams.len(),
                    self.producers.len()
                );
                return Ok(());
            }
        }
    }

    /// No connection is left but the admin listener's (which stays open while draining).
    fn only_admin_left(&self) -> bool {
        self.streams.iter().all(|(_, c)| c.has(flags::ADMIN))
    }

    /// Reads the clock: the one place the loop does (protocol 1), once before sleeping (for
    /// the poll timeout) and once after waking (for everything the turn does).
    fn tick(&mut self) {
        self.now = self.started.elapsed().as_millis() as Millis;
        self.wall_us = unix_micros();
    }

    fn wall_ms(&self) -> u64 {
        self.wall_us / 1000
    }

    /// The stream limits of `[streams]` as the table takes them.
    fn stream_limits(&self) -> table::Limits {
        let s = &self.config.streams;
        table::Limits {
            keepalive: s.keepalive.as_millis() as Millis,
            write_timeout: s.write_timeout.as_millis() as Millis,
            max_pending: s.max_pending_bytes,
        }
    }

    fn poll_timeout(&self, now: Millis) -> Option<Duration> {
        if self.streams.has_work() || !self.producers_to_read.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut ms = self.wheel.next_timeout(now);
        if let Some(deadline) = self.next_catch_up_deadline() {
            let left = deadline.saturating_sub(now);
            ms = Some(ms.map_or(left, |m| m.min(left)));
        }
        if let Some(until) = self.draining_until {
            let left = until.saturating_sub(now);
            ms = Some(ms.map_or(left, |m| m.min(left)));
        }
        ms.map(Duration::from_millis)
    }

    fn dispatch(&mut self, token: Token, readable: bool, writable: bool) {
        match token {
            HTTP_LISTENER => self.accept_http(),
            INGEST_LISTENER => self.accept_producers(),
            ops::ADMIN_LISTENER => self.accept_admin(),
            WAKER => {}
            SIGNALS => self.take_signals(),
            Token(t) if t >= PRODUCER_BASE => {
                let key = t - PRODUCER_BASE;
                if writable {
                    self.producer_writable(key);
                }
                if readable {
                    self.read_producer(key);
                }
            }
            Token(key) => {
                let key = key as u32;
                if writable {
                    self.streams.writable(key);
                }
                if readable {
                    self.conn_readable(key);
                }
            }
        }
    }

    // ---- timers: keepalive, timeouts, housekeeping ---------------------------------------

    fn fire_timers(&mut self) {
        let mut fired = Vec::new();
        self.wheel.advance(self.now, &mut fired);
        for due in fired {
            match due {
                Due::Conn(key) => {
                    let limits = self.stream_limits();
                    let (wheel, stats) = (&mut self.wheel, &mut self.stats);
                    self.streams
                        .timer_fired(key, wheel, &limits, self.now, stats);
                }
                Due::PruneHistory => {
                    let pruned = self.hub.prune(self.wall_ms(), PRUNE_BUDGET);
                    if let Some(forgotten) = self.commit.enforce_retention(self.wall_ms()) {
                        self.hub.note_log_trimmed(forgotten);
                    }
                    // More to evict: again at the next tick, the loop serving in between.
                    let next = match pruned.more {
                        true => TICK_MS,
                        false => PRUNE_EVERY_MS,
                    };
                    self.wheel.insert(self.now + next, Due::PruneHistory);
                }
                Due::TrimHeap => {
                    let started = Instant::now();
                    self.streams.release_spare();
                    crate::heap::release_free_memory();
                    self.stats.heap_trims += 1;
                    self.stats.heap_trim_ns += started.elapsed().as_nanos() as u64;
                    self.wheel
                        .insert(self.now + HEAP_TRIM_EVERY_MS, Due::TrimHeap);
                }
                Due::ResumeAccept => {
                    self.accept_paused = false;
                    self.accept_http();
                    self.accept_producers();
                }
                Due::SlowSummary => {
                    let new = std::mem::take(&mut self.stats.slow_unreported);
                    info!(
                        "disconnected slow subscribers count={} pending={} write_timeout={} \
                         peer_timeout={} total={}",
                        new.total(),
                        new.pending,
                        new.write_timeout,
                        new.peer_timeout,
                        self.stats.slow_disconnects.total()
                    );
                    self.slow_summary_armed = false;
                }
                Due::Ops(timer) => self.ops_timer(timer),
            }
        }
    }

    fn request_timeout(&self) -> Millis {
        self.config.http.request_timeout.as_millis() as Millis
    }

    // ---- close -----------------------------------------------------------------------------

    /// Closes what was listed this turn, and arms the once-a-second summary of slow
    /// disconnects.
    fn reap(&mut self) {
        self.unpark_closing();
        let registry = self.poll.registry();
        self.streams.reap(
            &mut self.hub,
            &mut self.wheel,
            registry,
            &mut self.per_client,
        );
        if self.stats.slow_unreported.total() > 0 && !self.slow_summary_armed {
            self.slow_summary_armed = true;
            self.wheel.insert(self.now + 1000, Due::SlowSummary);
        }
    }

    // ---- graceful stop ---------------------------------------------------------------------

    /// Stops accepting, removes the socket file, tells every stream when to come back
    /// (a jittered `retry:` spread over `streams.shutdown_spread`) and closes it once written.
    fn begin_drain(&mut self) {
        let drain = self.config.streams.drain_timeout.as_millis() as Millis;
        info!(
            "stopping: draining streams={} timeout_ms={drain}",
            self.streams.len()
        );
        self.draining_until = Some(self.now + drain);
        self.ops_stopping();
        if let Some(mut l) = self.http.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        if let Some(mut l) = self.ingest.take() {
            let _ = self.poll.registry().deregister(&mut l);
            if self.ops.owns_ingest_file {
                let _ = std::fs::remove_file(&self.ingest_path);
            }
        }
        let base = self.config.streams.retry_base.as_millis() as u64;
        let spread = self.config.streams.shutdown_spread.as_millis() as u64;
        let rng = &mut self.rng;
        self.streams
            .begin_drain(self.now, || sse::retry(base + rng.below(spread + 1)));
        let producers: Vec<usize> = self.producers.iter().map(|(k, _)| k).collect();
        for key in producers {
            if let Some(p) = self.producers.get_mut(key) {
                p.eof = true;
            }
            self.flush_producer(key);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.ingest.is_some() && self.ops.owns_ingest_file {
            let _ = std::fs::remove_file(&self.ingest_path);
        }
    }
}

enum ReadOutcome {
    Open,
    Closed,
}

/// Reads until `WouldBlock` or until `buf` holds `limit` bytes. Over TLS, what the
/// records cost (plaintext plus `tls::RECORD_COST` each) is bounded too: a client that
/// sends many records for few bytes is closed rather than read on.
fn read_into(
    sock: &mut TcpStream,
    mut tls: Option<&mut tls::Session>,
    buf: &mut Vec<u8>,
    limit: usize,
    scratch: &mut [u8],
) -> ReadOutcome {
    let budget = 2 * limit + 64 * tls::RECORD_COST;
    let mut spent = 0;
    while buf.len() < limit {
        if spent > budget {
            return ReadOutcome::Closed;
        }
        let room = (limit - buf.len()).min(scratch.len());
        let read = match tls.as_deref_mut() {
            // Plaintext comes a record at a time: `buf` may pass `limit` by one record.
            Some(tls) => tls::read(sock, tls, scratch, &mut |p| buf.extend_from_slice(p)),
            None => sock
                .read(&mut scratch[..room])
                .inspect(|&n| buf.extend_from_slice(&scratch[..n])),
        };
        match read {
            Ok(0) => return ReadOutcome::Closed,
            Ok(n) => spent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return ReadOutcome::Closed,
        }
    }
    ReadOutcome::Open
}

fn unix_millis() -> u64 {
    unix_micros() / 1000
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
