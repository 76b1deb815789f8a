//! The stream table: every HTTP connection (a slab keyed by its mio token), the lists of
//! connections with output to write or to close this turn, and the per-connection side
//! maps (token deadline, Origin hash, replay floor, how the per-client cap counted it).
//!
//! Every per-connection transition lives here, so the state machine reads in one place:
//! insert → answer | start (live, or replay then live) → fan-out of committed events
//! (ending a stream whose topics are all final, cutting a slow one) → flush with
//! backpressure → keepalive and timeouts → linger → close → reap. The table never reads a
//! request or decides policy (the router does) and never reads the clock: `now` (loop
//! milliseconds) is passed in, so every transition is testable with a fixed clock.

use crate::conn::{Conn, ConnState, Flush, OutQueue, QueuePool, flags, tls};
use crate::due::Due;
use crate::fanout::{self, Delivery};
use crate::history::{Event, TopicId};
use crate::http::publish::Stage;
use crate::http::response::{self, After};
use crate::hub::Hub;
use crate::limits::{Counted, PerClient};
use crate::metrics::CutReason;
use crate::metrics::Stats;
use crate::sse::{self, Frame};
use crate::timer::{Millis, Wheel};
use log::debug;
use mio::Registry;
use mio::net::TcpStream;
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::Shutdown;
use std::rc::Rc;
use std::time::Duration;

/// `writev` calls per connection per turn, so one fast reader cannot starve the rest.
pub const WRITES_PER_TURN: usize = 4;
/// Connections written per turn: a sweep over many streams is cut into slices, and the
/// loop polls between them, so producers are read and answered, and new events queued,
/// while a long sweep is under way (on loopback a slice takes ~0.25 ms). An event that
/// arrives mid-sweep joins the queues of the streams not yet written.
pub const CONNS_PER_SLICE: usize = 32;
/// Bytes a client may send after a stream's request head before it is closed.
pub const MAX_DISCARDED: u16 = 4096;
/// How long a closing connection waits for the client to close after our last answer.
pub const LINGER_MS: Millis = 2_000;
/// A replaying stream's queue is refilled from history up to this many bytes at a time.
pub const REPLAY_BATCH_BYTES: usize = 64 * 1024;

/// The stream limits of `[streams]`, in loop milliseconds and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub keepalive: Millis,
    pub write_timeout: Millis,
    pub max_pending: usize,
}

/// How a stream starts (from the router's plan).
#[derive(Debug, Default)]
pub struct Start {
    /// Resume from this cursor (and send this `reset` frame first); None: live at once.
    pub replay: Option<(u64, Option<Vec<u8>>)>,
    /// What was already gone when the replay was planned (see `replay_floors`).
    pub replay_floor: Option<u64>,
    /// Opened with a token: when it runs out (loop ms).
    pub token_deadline: Option<Millis>,
    /// `cors::origin_hash` of the request's Origin.
    pub origin_hash: Option<u64>,
    /// The `retry:` value of the stream's start (ms).
    pub retry_ms: u64,
}

pub struct StreamTable {
    conns: Slab<Conn>,
    /// Connections with queued output to write, in the order they were listed; each turn
    /// writes the first `CONNS_PER_SLICE`.
    pending: VecDeque<u32>,
    /// Connections to close at the end of this turn.
    closing: Vec<u32>,
    /// Emptied output queues kept for reuse (`release_spare` gives them back).
    pool: QueuePool,
    /// The fan-out's list of a topic's subscribers in key order (kept for its capacity;
    /// `release_spare` gives it back).
    fan_order: Vec<u32>,
    /// Replaying streams that were sent `reset` because events were already evicted: the
    /// highest id evicted at that moment (later evictions above it end the replay).
    replay_floors: HashMap<u32, u64>,
    /// Streams opened with a token: when it expires (loop ms, `exp` + leeway).
    token_deadline: HashMap<u32, Millis>,
    /// Streams whose request had an `Origin`: its keyed hash (`cors::origin_hash`), so a
    /// reload can re-check it at a fixed cost whatever the client sent.
    stream_origin: HashMap<u32, u64>,
    /// How each connection is counted by the per-client cap (only when the cap is on).
    counted_as: HashMap<u32, Counted>,
    keepalive: Frame,
}

impl Default for StreamTable {
    fn default() -> Self {
        StreamTable {
            conns: Slab::new(),
            pending: VecDeque::new(),
            closing: Vec::new(),
            pool: QueuePool::default(),
            fan_order: Vec::new(),
            replay_floors: HashMap::new(),
            token_deadline: HashMap::new(),
            stream_origin: HashMap::new(),
            counted_as: HashMap::new(),
            keepalive: Rc::from(sse::KEEPALIVE),
        }
    }
}

impl StreamTable {
    // ---- lookup -------------------------------------------------------------------------

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn get(&self, key: u32) -> Option<&Conn> {
        self.conns.get(key as usize)
    }

    pub fn get_mut(&mut self, key: u32) -> Option<&mut Conn> {
        self.conns.get_mut(key as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &Conn)> {
        self.conns.iter().map(|(k, c)| (k as u32, c))
    }

    pub fn keys(&self) -> Vec<u32> {
        self.conns.iter().map(|(k, _)| k as u32).collect()
    }

    /// Gives the kept emptied queues back to the allocator (before a heap trim).
    pub fn release_spare(&mut self) {
        self.pool.release();
        self.fan_order = Vec::new();
    }

    /// Whether anything must be written or closed before the loop may sleep.
    pub fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.closing.is_empty()
    }

    /// Connections listed for closing at the end of this turn.
    pub fn closing(&self) -> &[u32] {
        &self.closing
    }

    pub fn token_deadline(&self, key: u32) -> Option<Millis> {
        self.token_deadline.get(&key).copied()
    }

    pub fn set_token_deadline(&mut self, key: u32, deadline: Millis) {
        self.token_deadline.insert(key, deadline);
    }

    pub fn origin_hash(&self, key: u32) -> Option<u64> {
        self.stream_origin.get(&key).copied()
    }

    pub fn counted_as(&self, key: u32) -> Option<Counted> {
        self.counted_as.get(&key).copied()
    }

    pub fn set_counted_as(&mut self, key: u32, counted: Counted) {
        self.counted_as.insert(key, counted);
    }

    // ---- insert and answer ----------------------------------------------------------------

    /// Adds an accepted connection (reading its request head until `deadline`); returns its
    /// key. The caller registers `sock` with the key as its token.
    pub fn insert(
        &mut self,
        sock: TcpStream,
        now: Millis,
        conn_flags: u8,
        deadline: Millis,
        wheel: &mut Wheel<Due>,
    ) -> u32 {
        let entry = self.conns.vacant_entry();
        let key = entry.key() as u32;
        let mut conn = Conn::new(sock, now);
        conn.set(conn_flags);
        conn.timer = Some(wheel.insert(deadline, Due::Conn(key)));
        entry.insert(conn);
        key
    }

    /// The key the next `insert` will use (to register the socket first).
    pub fn next_key(&self) -> u32 {
        self.conns.vacant_key() as u32
    }

    /// Queues `bytes` on the connection and lists it for writing; with `close_after` it
    /// lingers and closes once everything queued is written.
    pub fn queue(&mut self, key: u32, bytes: Frame, close_after: bool, now: Millis) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if close_after {
            conn.set(flags::CLOSE_AFTER_FLUSH);
        }
        conn.out
            .get_or_insert_with(|| self.pool.take(now))
            .push(bytes);
        fanout::mark_pending(conn, key, &mut self.pending);
    }

    /// Queues a plain answer (`response::plain`); `After::Close` lingers and closes once it
    /// is written. Error statuses are counted.
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        &mut self,
        key: u32,
        status: u16,
        reason: &str,
        after: After,
        headers: &[(&str, &str)],
        head_only: bool,
        now: Millis,
        stats: &mut Stats,
    ) {
        let bytes = response::plain(status, reason, after, headers, head_only);
        if status >= 400 {
            stats.rejected.count(status);
        }
        self.queue(key, bytes.into(), after == After::Close, now);
    }

    // ---- subscribe ---------------------------------------------------------------------------

    /// Answers `200` with the stream head and `retry:`; subscribes the topics; then either
    /// replays (`start.replay`: cursor, optional `reset` frame) or goes live at once. With
    /// `head_only` (HEAD) only the head is sent and the connection closes.
    #[allow(clippy::too_many_arguments)]
    pub fn start_stream(
        &mut self,
        key: u32,
        topics: Box<[TopicId]>,
        start: Start,
        headers: &[(&str, &str)],
        head_only: bool,
        hub: &mut Hub,
        wheel: &mut Wheel<Due>,
        limits: &Limits,
        now: Millis,
        stats: &mut Stats,
    ) {
        let mut head = response::stream_head(headers);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if head_only {
            self.queue(key, head.into(), true, now);
            return;
        }
        head.extend_from_slice(&sse::retry(start.retry_ms));
        for &t in topics.iter() {
            hub.subscribe(t, key);
        }
        // Bytes that came with the head count toward the discard limit.
        if let ConnState::Reading { buf } = &conn.state {
            conn.discarded = buf.len().min(usize::from(u16::MAX)) as u16;
        }
        conn.state = ConnState::Streaming { topics };
        if let Some(tls) = conn.tls.as_deref_mut() {
            // A stream takes no input but close_notify, KeyUpdates and alerts: tiny records.
            tls.limit_records_to_stream_input();
        }
        conn.wrote_at(now);
        match start.replay {
            Some((cursor, reset)) => {
                conn.cursor = cursor;
                conn.set(flags::REPLAYING);
                head.extend_from_slice(&reset.unwrap_or_default());
            }
            None => conn.cursor = hub.last_id(),
        }
        stats.streams_opened += 1;
        if let Some(timer) = conn.timer {
            wheel.reschedule(timer, now + limits.keepalive);
        }
        let too_much = conn.discarded > MAX_DISCARDED;
        if let Some(floor) = start.replay_floor {
            self.replay_floors.insert(key, floor);
        }
        if let Some(hash) = start.origin_hash {
            self.stream_origin.insert(key, hash);
        }
        self.queue(key, head.into(), false, now);
        if too_much {
            debug!("closing stream: client sent too much after its request");
            return self.close(key);
        }
        if let Some(deadline) = start.token_deadline {
            self.token_deadline.insert(key, deadline);
            self.arm_no_later_than(key, deadline, wheel);
        }
        self.refill_replay(key, hub, now, stats);
    }

    /// Queues the next batch of a replaying stream's missed events, straight from history
    /// (shared frames, nothing copied), merged across its topics in id order. Called when
    /// the stream starts and whenever its queue has drained, so a slow client pulls the
    /// replay at its own pace. Live events are not queued while replaying: they are in
    /// history before they are fanned out, so the replay reaches them without gap or
    /// duplicate, and the stream goes live once it has caught up.
    pub fn refill_replay(&mut self, key: u32, hub: &Hub, now: Millis, stats: &mut Stats) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if !conn.has(flags::REPLAYING) || conn.has(flags::CLOSING | flags::CLOSE_AFTER_FLUSH) {
            return;
        }
        let ConnState::Streaming { topics } = &conn.state else {
            return;
        };
        let floor = self.replay_floors.get(&key).copied().unwrap_or(0);
        if hub.evicted_after(topics, conn.cursor.max(floor)) {
            debug!("closing replaying stream: an unsent event was evicted");
            return self.close(key);
        }
        let out = conn.out.get_or_insert_with(|| self.pool.take(now));
        let mut finished = false;
        let mut caught_up = false;
        while out.pending_bytes() < REPLAY_BATCH_BYTES {
            let Some(event) = hub.next_after(topics, conn.cursor) else {
                caught_up = true;
                // Nothing more can come on topics that are all final.
                finished = hub.all_final(topics);
                break;
            };
            out.push(event.frame.clone());
            conn.cursor = event.id;
            stats.events_replayed += 1;
            if event.is_final && hub.stream_finished(topics, conn.cursor) {
                finished = true;
                break;
            }
        }
        let empty = out.is_empty();
        if caught_up || finished {
            conn.clear(flags::REPLAYING);
            self.replay_floors.remove(&key);
        }
        if finished {
            conn.set(flags::CLOSE_AFTER_FLUSH);
        }
        if empty {
            if let Some(q) = conn.out.take() {
                self.pool.put(q);
            }
        } else {
            fanout::mark_pending(conn, key, &mut self.pending);
        }
    }

    // ---- fan-out ---------------------------------------------------------------------------

    /// Queues a committed event's shared frame on every stream of its topics (once per
    /// stream); ends streams whose topics are now all final; cuts off slow subscribers.
    pub fn fan_out(
        &mut self,
        event: &Event,
        hub: &Hub,
        now: Millis,
        max_pending: usize,
        stats: &mut Stats,
    ) {
        stats.latency.committed(event.id);
        let mut subs = std::mem::take(&mut self.fan_order);
        for &t in event.topics.iter() {
            // In key order, not the set's hash order: the connections, their sockets and
            // the kernel's socket structures are then visited (here and in the sweep)
            // roughly in the order they were allocated, which on 10,000 subscribers
            // costs about 15 % less CPU than hopping around (bench-results/2026-11-29-issue15.md).
            subs.clear();
            subs.extend(hub.subscribers(t));
            subs.sort_unstable();
            for &sub in &subs {
                let Some(conn) = self.conns.get_mut(sub as usize) else {
                    continue;
                };
                let frame = &event.frame;
                match fanout::deliver(
                    conn,
                    sub,
                    frame,
                    event.id,
                    now,
                    max_pending,
                    &mut self.pending,
                    &mut self.pool,
                ) {
                    Delivery::Queued => {
                        stats.deliveries += 1;
                        if event.is_final
                            && let ConnState::Streaming { topics } = &conn.state
                            && hub.stream_finished(topics, conn.cursor)
                        {
                            // Every topic of this stream is final and sent: end it.
                            conn.set(flags::CLOSE_AFTER_FLUSH);
                        }
                    }
                    Delivery::Skipped => {}
                    Delivery::Overflow => {
                        count_cut(stats, CutReason::Pending);
                        reset_on_close(conn);
                        conn.set(flags::CLOSING);
                        self.closing.push(sub);
                    }
                }
            }
        }
        subs.clear();
        self.fan_order = subs;
    }

    // ---- write / backpressure --------------------------------------------------------------

    /// The socket became writable: list it again if it has something to write.
    pub fn writable(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        conn.clear(flags::WRITE_BLOCKED);
        if conn.out.is_some() || conn.tls.as_ref().is_some_and(|t| t.wants_write()) {
            fanout::mark_pending(conn, key, &mut self.pending);
        }
    }

    /// Lists the connection for writing (TLS handshake bytes to send).
    pub fn mark_pending(&mut self, key: u32) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            fanout::mark_pending(conn, key, &mut self.pending);
        }
    }

    /// Writes the queues of the next `CONNS_PER_SLICE` listed connections (a bounded
    /// number of writes each); the rest stay listed for the next turns. Keys of
    /// connections whose answer is fully written while reading requests are pushed to
    /// `answered`: the caller looks at their next pipelined request.
    pub fn flush_pending(
        &mut self,
        hub: &mut Hub,
        wheel: &mut Wheel<Due>,
        limits: &Limits,
        now: Millis,
        stats: &mut Stats,
        answered: &mut Vec<u32>,
    ) {
        stats.latency.new_slice();
        for _ in 0..CONNS_PER_SLICE {
            let Some(key) = self.pending.pop_front() else {
                return;
            };
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            if !conn.has(flags::IN_PENDING) {
                // A stale entry: the connection listed under this key was closed and its
                // slot reused by one that is not listed, or is listed again further on.
                continue;
            }
            conn.clear(flags::IN_PENDING);
            if conn.has(flags::CLOSING) {
                continue;
            }
            let before = conn.pending_bytes();
            let since = conn.out.as_ref().map(|o| o.since);
            let result = match (conn.tls.as_deref_mut(), conn.out.as_deref_mut()) {
                (Some(tls), out) => flush_tls(&mut conn.sock, tls, out, &mut stats.writes),
                (None, Some(out)) => out.flush(&mut conn.sock, WRITES_PER_TURN, &mut stats.writes),
                (None, None) => continue,
            };
            let after = conn.pending_bytes();
            if after < before {
                conn.wrote_at(now);
                stats.bytes_written += (before - after) as u64;
            }
            match result {
                Ok(Flush::Done) => {
                    if let Some(since) = since {
                        stats.latency.written(conn.cursor, since);
                    }
                    if let Some(q) = conn.out.take() {
                        self.pool.put(q);
                    }
                    // An ending stream (drain, revoked by a reload, final) lingers even
                    // while it was replaying: its `retry:` was the last thing to send.
                    if conn.has(flags::CLOSE_AFTER_FLUSH) {
                        self.linger(key, hub, wheel, now, stats);
                    } else if conn.has(flags::REPLAYING) {
                        self.refill_replay(key, hub, now, stats);
                    } else if matches!(conn.state, ConnState::Reading { .. }) {
                        answered.push(key);
                    }
                }
                Ok(Flush::Blocked) => {
                    conn.set(flags::WRITE_BLOCKED);
                    if let Some(since) = since {
                        self.arm_no_later_than(key, since + limits.write_timeout, wheel);
                    }
                }
                Ok(Flush::Budget) => {
                    // Still writable: to the back of the list, after the others.
                    conn.set(flags::IN_PENDING);
                    self.pending.push_back(key);
                }
                Err(e) => {
                    debug!("write failed: {e}");
                    self.close_failed(key, &e, stats);
                }
            }
        }
    }

    // ---- timers: keepalive, timeouts ---------------------------------------------------------

    /// Makes sure the connection's timer fires no later than `deadline`.
    pub fn arm_no_later_than(&mut self, key: u32, deadline: Millis, wheel: &mut Wheel<Due>) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        match conn.timer {
            Some(t) if wheel.deadline(t).is_some_and(|d| d <= deadline) => {}
            Some(t) => {
                wheel.reschedule(t, deadline);
            }
            None => conn.timer = Some(wheel.insert(deadline, Due::Conn(key))),
        }
    }

    /// Sets the timer of a connection that is reading a request to `deadline`.
    pub fn reschedule(&mut self, key: u32, deadline: Millis, wheel: &mut Wheel<Due>) {
        if let Some(timer) = self.conns.get(key as usize).and_then(|c| c.timer) {
            wheel.reschedule(timer, deadline);
        }
    }

    /// The connection's single timer fired: decide from its state what was due — the
    /// request or linger timeout, the token's expiry, the write timeout of pending output,
    /// or a keepalive on a stream that sent nothing for `keepalive` — and re-arm it.
    pub fn timer_fired(
        &mut self,
        key: u32,
        wheel: &mut Wheel<Due>,
        limits: &Limits,
        now: Millis,
        stats: &mut Stats,
    ) {
        let token_deadline = self.token_deadline.get(&key).copied();
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        conn.timer = None;
        if conn.has(flags::CLOSING) {
            return;
        }
        if token_deadline.is_some_and(|d| now >= d) {
            debug!("closing stream: its token expired");
            return self.close(key);
        }
        let (keepalive, write_timeout) = (limits.keepalive, limits.write_timeout);
        let next = match conn.state {
            ConnState::Reading { .. } | ConnState::Lingering => {
                debug!("closing connection: request or linger timeout");
                return self.close(key);
            }
            // A body that stops arriving: closed, nothing of it published. Once the body
            // is complete the request has no timer (its commit answers in bounded time).
            ConnState::Publishing(ref p) if p.stage == Stage::Body => {
                debug!("closing connection: publish body timeout");
                return self.close(key);
            }
            ConnState::Publishing(_) => return,
            ConnState::Streaming { .. } => {
                if conn
                    .tls
                    .as_deref_mut()
                    .is_some_and(|t| t.incomplete_too_long(now, keepalive))
                {
                    debug!("closing stream: a TLS record left incomplete for too long");
                    if let Some(tls) = conn.tls.as_deref_mut() {
                        tls::close_notify_now(&mut conn.sock, tls);
                    }
                    return self.close(key);
                }
                if let Some(out) = &conn.out {
                    if now >= out.since + write_timeout {
                        debug!(
                            "closing slow stream: write timeout pending={}",
                            out.pending_bytes()
                        );
                        return self.close_slow(key, CutReason::WriteTimeout, stats);
                    }
                    // Pending output: wake one keepalive interval from now (a blocked
                    // stream costs a wakeup per interval), or at the write timeout if that
                    // comes first. A queue that drains meanwhile wrote after now, so this
                    // fires before its `last_write + keepalive` and re-arms at exactly that.
                    (now + keepalive).min(out.since + write_timeout)
                } else if conn.since_write(now) >= keepalive {
                    let keepalive_frame = self.keepalive.clone();
                    conn.out
                        .get_or_insert_with(|| self.pool.take(now))
                        .push(keepalive_frame);
                    fanout::mark_pending(conn, key, &mut self.pending);
                    now + keepalive
                } else {
                    conn.keepalive_due(now, keepalive)
                }
            }
        };
        let next = token_deadline.map_or(next, |d| next.min(d));
        conn.timer = Some(wheel.insert(next, Due::Conn(key)));
    }

    /// A shorter keepalive: idle streams whose next keepalive is further away than the new
    /// interval get it sooner (a longer one takes effect after each stream's next timer).
    pub fn pull_keepalives_forward(
        &mut self,
        keepalive: Millis,
        wheel: &mut Wheel<Due>,
        now: Millis,
    ) {
        for (key, conn) in self.conns.iter_mut() {
            if !conn.is_streaming() || conn.out.is_some() {
                continue;
            }
            let due = conn.keepalive_due(now, keepalive);
            match conn.timer {
                Some(t) if wheel.deadline(t).is_some_and(|d| d > due) => {
                    wheel.reschedule(t, due);
                }
                Some(_) => {}
                None => conn.timer = Some(wheel.insert(due, Due::Conn(key as u32))),
            }
        }
    }

    // ---- input on a stream ---------------------------------------------------------------------

    /// Reads and discards what a streaming or lingering client sends (a stream takes no
    /// input; a client that keeps sending is closed). `scratch` is the loop's read buffer.
    pub fn discard_input(&mut self, key: u32, scratch: &mut [u8], stats: &mut Stats) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.has(flags::CLOSING) || matches!(conn.state, ConnState::Reading { .. }) {
            return;
        }
        let lingering = matches!(conn.state, ConnState::Lingering);
        loop {
            let read = match conn.tls.as_deref_mut() {
                // Whole records are read into the loop's buffer; the plaintext is counted.
                Some(tls) if !lingering => tls::read(&mut conn.sock, tls, scratch, &mut |_| {}),
                _ => conn.sock.read(&mut scratch[..MAX_DISCARDED as usize + 1]),
            };
            match read {
                Ok(0) => {
                    if let Some(tls) = conn.tls.as_deref_mut()
                        && !lingering
                    {
                        // Answer the client's close_notify with ours (TLS 1.3 wants it).
                        tls::close_notify_now(&mut conn.sock, tls);
                    }
                    return self.close(key);
                }
                Ok(n) if lingering => {
                    // Discard what is still in flight, but not forever.
                    conn.discarded = conn.discarded.saturating_add(n as u16);
                    if conn.discarded == u16::MAX {
                        return self.close(key);
                    }
                }
                Ok(n) => {
                    // TLS: plaintext plus a cost per record (`tls::RECORD_COST`).
                    conn.discarded = conn.discarded.saturating_add(n.min(u16::MAX.into()) as u16);
                    if conn.discarded > MAX_DISCARDED {
                        debug!("closing stream: client keeps sending");
                        if let Some(tls) = conn.tls.as_deref_mut() {
                            tls::close_notify_now(&mut conn.sock, tls);
                        }
                        return self.close(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close_failed(key, &e, stats),
            }
        }
    }

    // ---- end ---------------------------------------------------------------------------------

    /// Lists a connection for closing at the end of the turn (safe from any call site).
    pub fn close(&mut self, key: u32) {
        if let Some(conn) = self.conns.get_mut(key as usize)
            && !conn.has(flags::CLOSING)
        {
            conn.set(flags::CLOSING);
            self.closing.push(key);
        }
    }

    /// Closes a subscriber that does not keep up (or whose peer vanished); it resumes
    /// from history on reconnect.
    ///
    /// The close is a reset (`reset_on_close`); the client resumes either way.
    pub fn close_slow(&mut self, key: u32, reason: CutReason, stats: &mut Stats) {
        count_cut(stats, reason);
        if let Some(conn) = self.conns.get(key as usize) {
            reset_on_close(conn);
        }
        self.close(key);
    }

    /// A read or write of the connection failed with `e`: closes it, counted as a
    /// `peer_timeout` cut when it is a stream the kernel gave up on: `ETIMEDOUT`
    /// (`TCP_USER_TIMEOUT` passed without the peer acknowledging or opening its window),
    /// or the ICMP unreachable the kernel reports instead when one arrived meanwhile.
    fn close_failed(&mut self, key: u32, e: &io::Error, stats: &mut Stats) {
        let streaming = self.conns.get(key as usize).is_some_and(Conn::is_streaming);
        let gave_up = matches!(
            e.raw_os_error(),
            Some(libc::ETIMEDOUT | libc::EHOSTUNREACH | libc::ENETUNREACH)
        );
        if streaming && gave_up {
            debug!("closing stream: the peer stopped acknowledging ({e})");
            self.close_slow(key, CutReason::PeerTimeout, stats);
        } else {
            self.close(key);
        }
    }

    /// Ends a stream the way a graceful stop does: `retry` (a `retry:` frame) is queued
    /// after what is pending, then the connection closes once it is written. Nothing else
    /// is queued on it meanwhile (fan-out and replay skip `CLOSE_AFTER_FLUSH`).
    pub fn end_stream_with(&mut self, key: u32, retry: Vec<u8>, now: Millis) {
        self.queue(key, retry.into(), true, now);
    }

    /// The drain of a graceful stop: each stream gets `retry_for()` (a fresh `retry:`)
    /// and closes once it is written; connections reading a request close (at once when
    /// nothing is queued for them).
    pub fn begin_drain(&mut self, now: Millis, mut retry_for: impl FnMut() -> Vec<u8>) {
        for key in self.keys() {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            if conn.has(flags::CLOSING) {
                continue;
            }
            match conn.state {
                ConnState::Streaming { .. } => self.end_stream_with(key, retry_for(), now),
                ConnState::Reading { .. } if conn.out.is_none() => self.close(key),
                ConnState::Reading { .. } => conn.set(flags::CLOSE_AFTER_FLUSH),
                // A body still arriving is dropped, nothing of it published; a publish
                // being committed gets its answer, then closes.
                ConnState::Publishing(ref p) if p.stage == Stage::Body => self.close(key),
                ConnState::Publishing(_) => conn.set(flags::CLOSE_AFTER_FLUSH),
                ConnState::Lingering => {}
            }
        }
    }

    /// The last answer is written: shut our side down and wait briefly for the client to
    /// close, so unread request bytes do not turn our close into a reset.
    fn linger(
        &mut self,
        key: u32,
        hub: &mut Hub,
        wheel: &mut Wheel<Due>,
        now: Millis,
        stats: &mut Stats,
    ) {
        if !self.conns.contains(key as usize) {
            return;
        }
        self.unsubscribe(key, hub);
        let conn = &mut self.conns[key as usize];
        conn.clear(flags::CLOSE_AFTER_FLUSH);
        conn.state = ConnState::Lingering;
        conn.discarded = 0;
        if let Some(tls) = conn.tls.as_deref_mut() {
            // One last write so the close_notify alert reaches the peer.
            tls::close_notify_now(&mut conn.sock, tls);
        }
        if conn.sock.shutdown(Shutdown::Write).is_err() {
            return self.close(key);
        }
        let deadline = now + LINGER_MS;
        match conn.timer {
            Some(t) => {
                wheel.reschedule(t, deadline);
            }
            None => conn.timer = Some(wheel.insert(deadline, Due::Conn(key))),
        }
        // Whatever the client sent meanwhile is read (and discarded) by the next readable
        // event; edge-triggered readiness may not come again for bytes already there.
        let mut scratch = [0u8; MAX_DISCARDED as usize + 1];
        self.discard_input(key, &mut scratch, stats);
    }

    fn unsubscribe(&mut self, key: u32, hub: &mut Hub) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if let ConnState::Streaming { topics } =
            std::mem::replace(&mut conn.state, ConnState::Lingering)
        {
            for &t in topics.iter() {
                hub.unsubscribe(t, key);
            }
        }
    }

    /// Closes every connection listed this turn: unsubscribes it, drops its side-map
    /// entries, releases its per-client slot, cancels its timer and deregisters it.
    pub fn reap(
        &mut self,
        hub: &mut Hub,
        wheel: &mut Wheel<Due>,
        registry: &Registry,
        per_client: &mut PerClient,
    ) {
        while let Some(key) = self.closing.pop() {
            self.unsubscribe(key, hub);
            self.replay_floors.remove(&key);
            self.token_deadline.remove(&key);
            self.stream_origin.remove(&key);
            if let Some(Counted::As(client)) = self.counted_as.remove(&key) {
                per_client.remove(client);
            }
            if let Some(mut conn) = self.conns.try_remove(key as usize) {
                if let Some(t) = conn.timer {
                    wheel.cancel(t);
                }
                let _ = registry.deregister(&mut conn.sock);
            }
        }
    }
}

/// A stream cut off as slow or gone: its close becomes a reset (`SO_LINGER` 0), so the
/// kernel frees what it still holds for it at once (up to `2 × streams.send_buffer`)
/// instead of retransmitting it until `TCP_USER_TIMEOUT`.
fn reset_on_close(conn: &Conn) {
    let _ = socket2::SockRef::from(&conn.sock).set_linger(Some(Duration::ZERO));
}

/// Writes a TLS connection's queue: frames sealed into records in the loop's shared
/// buffer and written, only unsent ciphertext kept per connection; a bounded number of
/// records per turn.
fn flush_tls(
    sock: &mut TcpStream,
    tls: &mut tls::Session,
    out: Option<&mut OutQueue>,
    writes: &mut u64,
) -> io::Result<Flush> {
    tls::flush(sock, tls, out, WRITES_PER_TURN, writes)
}

/// Counts a cut for `/metrics` and for the next log summary.
fn count_cut(stats: &mut Stats, reason: CutReason) {
    stats.slow_disconnects.count(reason);
    stats.slow_unreported.count(reason);
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
