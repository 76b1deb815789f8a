//! What the loop and the two threads share: the one report queue (the only way results
//! reach the loop, in the order they were pushed), the link's health (`Up`/`Down` decided
//! here, once per change), counters, and the shutdown flag. Holds no connection.

use super::{Options, Report};
use mio::Waker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The reader stops reading while the queue holds more entries than this (the loop has
/// fallen behind); it goes on when the loop has polled them.
pub(super) const MAX_QUEUED_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Writer = 0,
    Reader = 1,
}

/// The link as last reported to the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Nothing reported yet (start-up, before the first connect or failure).
    Starting,
    Up,
    Down,
}

struct State {
    reports: VecDeque<Report>,
    /// Entries in `reports` (the reader's bound).
    queued_entries: usize,
    writer_up: bool,
    reader_up: bool,
    health: Health,
    /// Why the link is not up (the latest failure), for `not stored: redis unavailable: …`.
    reason: String,
    /// Bumped on every failure of either side: the writer checks its connection when it
    /// changed (the reader, blocked in `XREAD`, usually notices a dead server first).
    failures: u64,
    /// The server (`run_id`) each side's connection reached, `None` without one: the probe
    /// compares them with the server the URL leads to now.
    servers: [Option<String>; 2],
}

pub(super) struct Shared {
    pub options: Options,
    waker: Arc<Waker>,
    state: Mutex<State>,
    /// Signalled when the queue has room again and at shutdown.
    changed: Condvar,
    shutdown: AtomicBool,
    up: AtomicBool,
    errors: AtomicU64,
    /// The highest id this node has seen: ids the writer got back and ids the reader read.
    /// The writer raises Redis's `last` to it on every connect.
    pub highest_seen: AtomicU64,
    /// The highest id the Function returned to this node's writer (the reader's half-dead
    /// check: an acknowledged id it never reads).
    pub acked_max: AtomicU64,
    /// Publishes handed to the writer and not yet answered.
    pub writer_pending: AtomicUsize,
    /// Reads that reached the end of the stream (fewer entries than asked for), counted
    /// after their entries were queued: once it has grown since a moment, every entry
    /// that existed then is in the queue or was read before (`Link::tail_reads`).
    pub tail_reads: AtomicU64,
    /// Bumped by the loop when a stream request waits for an id not read yet
    /// (`Link::want_tail`): a reader on a replica then learns where the primary's stream
    /// ends before it counts a tail read.
    pub tail_wanted: AtomicU64,
    /// `tail_wanted` at the last wake for a tail read (`count_tail_read`).
    tail_woken: AtomicU64,
    /// The reader reads from a replica now.
    pub on_replica: AtomicBool,
    /// Set by the probe: the URL now leads to another server than this side's connection
    /// (a failover behind a fixed address); the side reconnects.
    moved: [AtomicBool; 2],
}

impl Shared {
    pub fn new(options: Options, waker: Arc<Waker>) -> Shared {
        Shared {
            options,
            waker,
            state: Mutex::new(State {
                reports: VecDeque::new(),
                queued_entries: 0,
                writer_up: false,
                reader_up: false,
                health: Health::Starting,
                reason: "connecting".into(),
                failures: 0,
                servers: [None, None],
            }),
            changed: Condvar::new(),
            shutdown: AtomicBool::new(false),
            up: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            highest_seen: AtomicU64::new(0),
            acked_max: AtomicU64::new(0),
            writer_pending: AtomicUsize::new(0),
            tail_reads: AtomicU64::new(0),
            tail_wanted: AtomicU64::new(0),
            tail_woken: AtomicU64::new(0),
            on_replica: AtomicBool::new(false),
            moved: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    /// The server (`run_id`) `side`'s connection reached; `None` when it has none.
    pub fn set_server(&self, side: Side, run_id: Option<&str>) {
        self.lock().servers[side as usize] = run_id.map(str::to_string);
    }

    /// The servers both sides' connections reached (writer, reader).
    pub fn servers(&self) -> [Option<String>; 2] {
        self.lock().servers.clone()
    }

    /// The probe found the URL leading elsewhere than `side`'s connection.
    pub fn mark_moved(&self, side: Side) {
        self.moved[side as usize].store(true, Ordering::SeqCst);
    }

    /// Whether `side` must reconnect because the URL leads elsewhere now (clears it).
    pub fn take_moved(&self, side: Side) -> bool {
        self.moved[side as usize].swap(false, Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked while holding the lock left a consistent queue (every
        // change is one push or pop); keep going rather than cascade the panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::warn!("cluster: waking the loop failed: {e}");
        }
    }

    /// Queues a report that is not `Entries` and wakes the loop.
    pub fn push(&self, report: Report) {
        debug_assert!(!matches!(report, Report::Entries(_)));
        self.lock().reports.push_back(report);
        self.wake();
    }

    /// Queues entries, first waiting while the queue is over its bound. `false` when the
    /// link is shutting down (the entries are dropped).
    pub fn push_entries(&self, entries: Vec<super::Entry>) -> bool {
        if entries.is_empty() {
            return true;
        }
        let mut state = self.lock();
        while state.queued_entries > MAX_QUEUED_ENTRIES {
            if self.is_shutting_down() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.queued_entries += entries.len();
        state.reports.push_back(Report::Entries(entries));
        drop(state);
        self.wake();
        true
    }

    /// The loop's side of the queue.
    pub fn pop(&self) -> Option<Report> {
        let mut state = self.lock();
        let report = state.reports.pop_front()?;
        if let Report::Entries(entries) = &report {
            let before = state.queued_entries;
            state.queued_entries = before.saturating_sub(entries.len());
            if before > MAX_QUEUED_ENTRIES && state.queued_entries <= MAX_QUEUED_ENTRIES {
                self.changed.notify_all();
            }
        }
        Some(report)
    }

    /// One side connected (`Ok`) or failed (`Err(reason)`). Reports `Up` when both work
    /// and `Down` on the first failure after start-up or `Up`, once per outage.
    pub fn set_side(&self, side: Side, result: Result<(), &str>) {
        let mut state = self.lock();
        let up = result.is_ok();
        match side {
            Side::Writer => state.writer_up = up,
            Side::Reader => state.reader_up = up,
        }
        let report = match result {
            Ok(()) if state.writer_up && state.reader_up && state.health != Health::Up => {
                state.health = Health::Up;
                Some(Report::Up)
            }
            Ok(()) => None,
            Err(reason) => {
                if side == Side::Reader {
                    // Usually the server went away: the writer's idle connection is
                    // suspect too until it has answered again (`Writer::verify`), so the
                    // link is not reported up on a dead writer connection.
                    state.writer_up = false;
                }
                state.reason = reason.to_string();
                state.failures += 1;
                (state.health != Health::Down).then(|| {
                    state.health = Health::Down;
                    Report::Down(reason.to_string())
                })
            }
        };
        self.up.store(state.health == Health::Up, Ordering::SeqCst);
        if let Some(report) = report {
            state.reports.push_back(report);
            drop(state);
            self.wake();
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Why the link is not up (the latest failure).
    pub fn down_reason(&self) -> String {
        self.lock().reason.clone()
    }

    /// Failures of either side so far (see `State::failures`).
    pub fn failures(&self) -> u64 {
        self.lock().failures
    }

    /// Something hints that the primary failed (a replica lost its link to it, or was
    /// promoted) without either side failing: the writer checks its connection before its
    /// next call, as after a failure (`failures` grows; health is unchanged).
    pub fn suspect_primary(&self) {
        self.lock().failures += 1;
    }

    pub fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// An id this node saw (returned to the writer or read by the reader).
    pub fn saw(&self, id: u64) {
        self.highest_seen.fetch_max(id, Ordering::SeqCst);
    }

    /// A read reached the end of the stream (after its entries were queued): counts it,
    /// and wakes the loop when a stream request has waited for one since the last such
    /// wake (`tail_wanted` grew), not on every read: the entries woke it already.
    pub fn count_tail_read(&self) {
        self.tail_reads.fetch_add(1, Ordering::SeqCst);
        let wanted = self.tail_wanted.load(Ordering::SeqCst);
        if self.tail_woken.swap(wanted, Ordering::SeqCst) != wanted {
            self.wake();
        }
    }

    pub fn shut_down(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        let _guard = self.lock();
        self.changed.notify_all();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Sleeps for `d` or until shutdown; `false` when shutting down.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut state = self.lock();
        loop {
            if self.is_shutting_down() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
