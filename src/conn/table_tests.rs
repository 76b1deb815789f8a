//! Deterministic tests of the stream table: a fixed clock (every `now` is chosen by the
//! test; nothing sleeps or reads the clock), real loopback socket pairs, a real `Hub` and
//! timer wheel, exact bytes and exact moments. Each test drives the table the way the
//! event loop does: `start_stream`, `fan_out`, `flush_pending`, the wheel firing into
//! `timer_fired`, then `reap`.

use super::*;
use crate::history::Limits as HistoryLimits;
use crate::ingest::line::Publish;
use mio::{Interest, Poll, Token};
use socket2::{Domain, SockRef, Socket, Type};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream as StdStream};
use std::time::Duration;

/// `streams.keepalive` of every test.
const K: Millis = 1_000;
/// `streams.write_timeout` of every test.
const W: Millis = 5_000;
/// `streams.max_pending_bytes` where a test does not choose its own.
const MAX_PENDING: usize = 1 << 20;
const RETRY_MS: u64 = 1_500;
/// The timer wheel's tick (its granularity).
const TICK: Millis = 4;

/// Everything the event loop hands the table, built for real.
struct Rig {
    table: StreamTable,
    hub: Hub,
    wheel: Wheel<Due>,
    stats: Stats,
    poll: Poll,
    per_client: PerClient,
    limits: Limits,
    listener: TcpListener,
}

/// The client end of a connection: a blocking socket read with a timeout.
struct Client(StdStream);

impl Rig {
    fn new() -> Rig {
        Rig::with_history(HistoryLimits {
            max_events: 1_000,
            max_age: 3_600_000,
            max_bytes: 64 << 20,
        })
    }

    fn with_history(history: HistoryLimits) -> Rig {
        Rig {
            table: StreamTable::default(),
            hub: Hub::new(history, 0, 0),
            wheel: Wheel::new(TICK, 4096, 0),
            stats: Stats::default(),
            poll: Poll::new().expect("poll"),
            per_client: PerClient::default(),
            limits: Limits {
                keepalive: K,
                write_timeout: W,
                max_pending: MAX_PENDING,
            },
            listener: TcpListener::bind("127.0.0.1:0").expect("bind"),
        }
    }

    /// Accepts a loopback connection into the table at `now`, reading its request until
    /// `deadline`.
    fn connect(&mut self, now: Millis, deadline: Millis) -> (u32, Client) {
        self.connect_with(now, deadline, false)
    }

    /// `connect`; with `tiny_buffers` the client's receive buffer and the server's send
    /// buffer are as small as the kernel allows, so output backs up after a few KiB.
    fn connect_with(&mut self, now: Millis, deadline: Millis, tiny_buffers: bool) -> (u32, Client) {
        let addr: SocketAddr = self.listener.local_addr().expect("addr");
        let client = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        if tiny_buffers {
            // Before connect, so the advertised window is small from the start.
            client.set_recv_buffer_size(1).expect("SO_RCVBUF");
        }
        client.connect(&addr.into()).expect("connect");
        let client: StdStream = client.into();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let (server, _) = self.listener.accept().expect("accept");
        if tiny_buffers {
            SockRef::from(&server)
                .set_send_buffer_size(1)
                .expect("SO_SNDBUF");
        }
        server.set_nonblocking(true).expect("nonblocking");
        let mut sock = TcpStream::from_std(server);
        let key = self.table.next_key();
        self.poll
            .registry()
            .register(
                &mut sock,
                Token(key as usize),
                Interest::READABLE | Interest::WRITABLE,
            )
            .expect("register");
        let inserted = self.table.insert(sock, now, 0, deadline, &mut self.wheel);
        assert_eq!(inserted, key);
        (key, Client(client))
    }

    /// A connection whose request asked for a stream on `topics`, started at `now`.
    fn stream(&mut self, now: Millis, topics: &[&str], start: Start) -> (u32, Client) {
        self.stream_with(now, topics, start, false)
    }

    fn stream_with(
        &mut self,
        now: Millis,
        topics: &[&str],
        start: Start,
        tiny_buffers: bool,
    ) -> (u32, Client) {
        let (key, client) = self.connect_with(now, now + 10_000, tiny_buffers);
        let topics: Box<[TopicId]> = topics.iter().map(|t| self.hub.intern(t)).collect();
        self.table.start_stream(
            key,
            topics,
            start,
            &[],
            false,
            &mut self.hub,
            &mut self.wheel,
            &self.limits,
            now,
            &mut self.stats,
        );
        (key, client)
    }

    /// Accepts an event (id, frame) without committing it.
    fn accept(&mut self, topics: &[&str], data: &str, is_final: bool) -> Rc<Event> {
        let p = Publish {
            topics: topics.iter().map(|t| (*t).into()).collect(),
            event: None,
            data: data.into(),
            is_final,
            key: None,
        };
        // Unix µs 0: ids are simply 1, 2, 3...
        self.hub.accept(&p, 0, 0).expect("accepted")
    }

    /// Publishes an event the way memory-only commit does: accept, retain, fan out.
    fn publish(&mut self, topics: &[&str], data: &str, is_final: bool, now: Millis) -> Rc<Event> {
        let max_pending = self.limits.max_pending;
        self.publish_capped(topics, data, is_final, now, max_pending)
    }

    fn publish_capped(
        &mut self,
        topics: &[&str],
        data: &str,
        is_final: bool,
        now: Millis,
        max_pending: usize,
    ) -> Rc<Event> {
        let event = self.accept(topics, data, is_final);
        self.hub.commit(&event);
        self.table
            .fan_out(&event, &self.hub, now, max_pending, &mut self.stats);
        event
    }

    fn flush(&mut self, now: Millis) {
        let mut answered = Vec::new();
        self.table.flush_pending(
            &mut self.hub,
            &mut self.wheel,
            &self.limits,
            now,
            &mut self.stats,
            &mut answered,
        );
        assert!(answered.is_empty(), "no request was answered: {answered:?}");
    }

    /// Advances the wheel to `now` and hands every fired connection timer to the table, as
    /// `fire_timers` does; returns the keys that fired, sorted.
    fn fire(&mut self, now: Millis) -> Vec<u32> {
        let mut fired = Vec::new();
        self.wheel.advance(now, &mut fired);
        let mut keys = Vec::new();
        for due in fired {
            let Due::Conn(key) = due else {
                panic!("only connection timers are armed");
            };
            self.table
                .timer_fired(key, &mut self.wheel, &self.limits, now, &mut self.stats);
            keys.push(key);
        }
        keys.sort_unstable();
        keys
    }

    fn reap(&mut self) {
        self.table.reap(
            &mut self.hub,
            &mut self.wheel,
            self.poll.registry(),
            &mut self.per_client,
        );
    }

    fn conn(&self, key: u32) -> &Conn {
        self.table.get(key).expect("connection still in the table")
    }

    fn closing(&self, key: u32) -> bool {
        self.conn(key).has(flags::CLOSING)
    }

    /// The deadline of the connection's single timer.
    fn timer_at(&self, key: u32) -> Option<Millis> {
        self.conn(key).timer.and_then(|t| self.wheel.deadline(t))
    }

    fn subscribers(&self, topic: &str) -> usize {
        let t = self.hub.topics.lookup(topic).expect("known topic");
        self.hub.topics.get(t).subscribers.len()
    }
}

impl Client {
    /// Reads exactly `want.len()` bytes (already written by the server) and compares them.
    fn expect(&mut self, want: &[u8]) {
        let mut got = vec![0; want.len()];
        let mut n = 0;
        while n < got.len() {
            match self.0.read(&mut got[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read after {n} bytes: {e}"),
            }
        }
        assert_eq!(
            String::from_utf8_lossy(&got[..n]),
            String::from_utf8_lossy(want)
        );
    }

    /// Nothing more is waiting, and the connection is still open.
    fn expect_nothing(&mut self) {
        self.0
            .set_read_timeout(Some(Duration::from_millis(30)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        match self.0.read(&mut byte) {
            Ok(0) => panic!("unexpected end of stream"),
            Ok(_) => panic!("unexpected byte {:?}", byte[0] as char),
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "{e}"
            ),
        }
        self.0
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
    }

    fn expect_exactly(&mut self, want: &[u8]) {
        self.expect(want);
        self.expect_nothing();
    }

    /// The server closed (FIN) with nothing more before it.
    fn expect_eof(&mut self) {
        let mut byte = [0u8; 1];
        match self.0.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("unexpected byte {:?} before the end", byte[0] as char),
            Err(e) => panic!("expected the end of the stream: {e}"),
        }
    }

    /// The server reset the connection (a slow cut: `SO_LINGER` 0), nothing before it.
    fn expect_reset(&mut self) {
        let mut byte = [0u8; 1];
        match self.0.read(&mut byte) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Ok(0) => panic!("a FIN, not a reset"),
            Ok(_) => panic!("unexpected byte {:?} before the reset", byte[0] as char),
            Err(e) => panic!("expected a reset: {e}"),
        }
    }

    /// Reads what arrives within a short wait (for output larger than socket buffers).
    fn drain_into(&mut self, into: &mut Vec<u8>) {
        self.0
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => into.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.0
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
    }
}

/// What a stream's client receives first: the response head and `retry:`.
fn head() -> Vec<u8> {
    let mut head = response::stream_head(&[]);
    head.extend_from_slice(&sse::retry(RETRY_MS));
    head
}

fn live() -> Start {
    Start {
        retry_ms: RETRY_MS,
        ..Start::default()
    }
}

fn replay_from(cursor: u64) -> Start {
    Start {
        replay: Some((cursor, None)),
        retry_ms: RETRY_MS,
        ..Start::default()
    }
}

fn frames(events: &[Rc<Event>]) -> Vec<u8> {
    events
        .iter()
        .flat_map(|e| e.frame.iter().copied())
        .collect()
}

#[test]
fn an_empty_table_has_no_work() {
    let table = StreamTable::default();
    assert!(table.is_empty());
    assert!(!table.has_work());
}

#[test]
fn replay_then_live_has_no_gap_and_no_duplicate() {
    let mut rig = Rig::new();
    let history: Vec<Rc<Event>> = (1..=5)
        .map(|i| rig.publish(&["a"], &format!("e{i}"), false, 0))
        .collect();
    let now = 1_000;
    let (key, mut client) = rig.stream(now, &["a", "b"], replay_from(history[1].id));
    rig.flush(now);
    let mut want = head();
    want.extend(frames(&history[2..]));
    client.expect_exactly(&want);
    assert_eq!(rig.stats.events_replayed, 3);
    assert!(!rig.conn(key).has(flags::REPLAYING), "caught up: live");
    assert!(!rig.table.has_work());

    // Live, on both topics of the stream: queued once.
    let e6 = rig.publish(&["a", "b"], "e6", false, now + 1);
    assert_eq!(rig.stats.deliveries, 1);
    rig.flush(now + 1);
    client.expect_exactly(&e6.frame);
}

#[test]
fn an_event_committed_while_replaying_is_sent_once_by_the_replay() {
    let mut rig = Rig::new();
    // More than one replay batch, so the stream is still replaying after it starts.
    let big = "x".repeat(20_000);
    let mut sent: Vec<Rc<Event>> = (0..6)
        .map(|_| rig.publish(&["a"], &big, false, 0))
        .collect();
    let now = 1_000;
    let (key, mut client) = rig.stream(now, &["a"], replay_from(0));
    assert!(rig.conn(key).has(flags::REPLAYING));
    let queued = rig.conn(key).pending_bytes();
    assert!(queued >= REPLAY_BATCH_BYTES && queued < head().len() + 4 * 20_100);

    let e7 = rig.publish(&["a"], "live", false, now);
    assert_eq!(
        rig.stats.deliveries, 0,
        "the replay will reach it in history"
    );
    assert_eq!(rig.conn(key).pending_bytes(), queued);
    sent.push(e7);

    let mut got = Vec::new();
    for _ in 0..100 {
        rig.flush(now);
        client.drain_into(&mut got);
        if rig.conn(key).out.is_none() && !rig.table.has_work() {
            break;
        }
        // The writable event the loop would get once the client read.
        rig.table.writable(key);
    }
    let mut want = head();
    want.extend(frames(&sent));
    assert_eq!(got.len(), want.len());
    assert!(got == want, "replayed bytes differ");
    assert!(!rig.conn(key).has(flags::REPLAYING));
    assert_eq!(rig.stats.events_replayed, 7);
    client.expect_nothing();
}

#[test]
fn the_final_event_of_the_last_open_topic_ends_a_multi_topic_stream() {
    let mut rig = Rig::new();
    let now = 1_000;
    let (key, mut client) = rig.stream(now, &["a", "b"], live());
    rig.flush(now);
    client.expect_exactly(&head());

    let end_a = rig.publish(&["a"], "end of a", true, now);
    rig.flush(now);
    client.expect_exactly(&end_a.frame);
    assert!(rig.conn(key).is_streaming(), "b is still open");
    assert!(!rig.conn(key).has(flags::CLOSE_AFTER_FLUSH));

    let end_b = rig.publish(&["b"], "end of b", true, now + 1);
    assert!(rig.conn(key).has(flags::CLOSE_AFTER_FLUSH));
    rig.flush(now + 1);
    client.expect(&end_b.frame);
    client.expect_eof();
    assert!(matches!(rig.conn(key).state, ConnState::Lingering));
    assert_eq!((rig.subscribers("a"), rig.subscribers("b")), (0, 0));

    // It lingers for the client to close, then closes.
    assert_eq!(rig.timer_at(key), Some(now + 1 + LINGER_MS));
    rig.fire(now + LINGER_MS);
    assert!(!rig.closing(key));
    assert_eq!(rig.fire(now + 1 + LINGER_MS), [key]);
    assert!(rig.closing(key));
    rig.reap();
    assert!(rig.table.is_empty());
}

#[test]
fn a_slow_reader_is_cut_one_byte_past_max_pending() {
    let mut rig = Rig::new();
    let now = 1_000;
    let (kept, mut kept_client) = rig.stream(now, &["a"], live());
    let (cut, mut cut_client) = rig.stream(now, &["b"], live());
    rig.flush(now);
    kept_client.expect_exactly(&head());
    cut_client.expect_exactly(&head());

    // The limit is chosen from the frames of `a`; no flush in between, so no socket
    // buffer absorbs anything.
    let a1 = rig.accept(&["a"], "x", false);
    let a2 = rig.accept(&["a"], "xxxxxxxx", false);
    let max = a1.frame.len() + a2.frame.len();
    for e in [&a1, &a2] {
        rig.hub.commit(e);
        rig.table.fan_out(e, &rig.hub, now, max, &mut rig.stats);
    }
    assert_eq!(rig.conn(kept).pending_bytes(), max);
    assert!(!rig.closing(kept), "exactly max_pending is kept");

    let b1 = rig.publish_capped(&["b"], "x", false, now, max);
    let b2 = rig.publish_capped(&["b"], "xxxxxxxxx", false, now, max);
    assert_eq!(b1.frame.len() + b2.frame.len(), max + 1);
    assert!(rig.closing(cut), "one byte more is cut");
    assert_eq!(rig.stats.slow_disconnects.pending, 1);
    assert_eq!(rig.stats.slow_disconnects.total(), 1);
    assert_eq!(rig.stats.deliveries, 3);
    assert!(!rig.closing(kept));

    rig.flush(now);
    rig.reap();
    assert!(rig.table.get(cut).is_none());
    assert_eq!(rig.subscribers("b"), 0);
    // A reset: the kernel drops what it still held for the stream.
    cut_client.expect_reset();
    let mut want = a1.frame.to_vec();
    want.extend_from_slice(&a2.frame);
    kept_client.expect_exactly(&want);
}

#[test]
fn keepalive_comes_at_exactly_the_interval_and_not_on_a_busy_stream() {
    let mut rig = Rig::new();
    let start = 10_000;
    let (idle, mut idle_client) = rig.stream(start, &["a"], live());
    let (busy, mut busy_client) = rig.stream(start, &["b"], live());
    rig.flush(start);
    idle_client.expect_exactly(&head());
    busy_client.expect_exactly(&head());

    let e = rig.publish(&["b"], "busy", false, start + K / 2);
    rig.flush(start + K / 2);
    busy_client.expect_exactly(&e.frame);

    assert!(rig.fire(start + K - 1).is_empty());
    assert_eq!(rig.fire(start + K), [idle, busy]);
    assert_eq!(rig.conn(idle).pending_bytes(), sse::KEEPALIVE.len());
    assert_eq!(rig.conn(busy).pending_bytes(), 0, "written K/2 ago");
    rig.flush(start + K);
    idle_client.expect_exactly(b":\n");
    busy_client.expect_nothing();

    // Each counts from its own last write.
    assert_eq!(rig.timer_at(idle), Some(start + 2 * K));
    assert_eq!(rig.timer_at(busy), Some(start + K + K / 2));
    assert!(rig.fire(start + K + K / 2 - 1).is_empty());
    assert_eq!(rig.fire(start + K + K / 2), [busy]);
    rig.flush(start + K + K / 2);
    busy_client.expect_exactly(b":\n");
    idle_client.expect_nothing();
}

#[test]
fn output_that_cannot_be_written_closes_at_exactly_the_write_timeout() {
    let mut rig = Rig::new();
    let start = 1_000;
    let (key, mut client) = rig.stream_with(start, &["a"], live(), true);
    rig.flush(start);
    client.expect_exactly(&head());

    // The client stops reading; a frame far larger than both socket buffers (and within
    // max_pending).
    let since = start + 300;
    rig.publish(&["a"], &"x".repeat(512 << 10), false, since);
    assert!(!rig.closing(key));
    assert_eq!(rig.conn(key).out.as_ref().map(|o| o.since), Some(since));
    for _ in 0..100 {
        if rig.conn(key).has(flags::WRITE_BLOCKED) {
            break;
        }
        rig.flush(since);
    }
    assert!(
        rig.conn(key).has(flags::WRITE_BLOCKED),
        "socket never filled"
    );
    assert!(rig.conn(key).pending_bytes() > 0);

    // Keepalive timers come and go meanwhile, one per interval at most; none of them
    // closes it early.
    let mut wakeups = 0;
    for now in since..since + W {
        wakeups += rig.fire(now).len();
        assert!(
            !rig.closing(key),
            "closed at {now}, before since + write_timeout"
        );
    }
    assert!(
        wakeups <= (W / K) as usize + 1,
        "{wakeups} wakeups of a blocked stream in {W} ms (keepalive {K} ms)"
    );
    assert_eq!(rig.fire(since + W), [key]);
    assert!(rig.closing(key));
    assert_eq!(rig.stats.slow_disconnects.write_timeout, 1);
    assert_eq!(rig.stats.slow_disconnects.total(), 1);
    rig.reap();
    assert!(rig.table.is_empty());
    assert_eq!(rig.subscribers("a"), 0);
}

/// Output backs up (the client stops reading, the socket refuses writes) while keepalive
/// timers come and go; then the client reads, the writable event comes and the queue
/// drains. The next keepalive is due one interval after that last write, not a timer
/// interval counted from the blocked period: drains between two blocked-stream wakeups,
/// right after one and right before the next, each get it on time.
#[test]
fn a_keepalive_is_on_time_after_a_write_blocked_queue_drains() {
    let start = 1_000;
    let since = start + 300;
    // While blocked the timer fires at start + K, then every K; drain between those.
    for drain_at in [start + 2 * K + K / 2, start + 2 * K + 1, start + 3 * K - 1] {
        let mut rig = Rig::new();
        let (key, mut client) = rig.stream_with(start, &["a"], live(), true);
        rig.flush(start);
        client.expect_exactly(&head());

        // Far more than both (tiny) socket buffers hold.
        let event = rig.publish(&["a"], &"x".repeat(64 << 10), false, since);
        for _ in 0..100 {
            if rig.conn(key).has(flags::WRITE_BLOCKED) {
                break;
            }
            rig.flush(since);
        }
        assert!(
            rig.conn(key).has(flags::WRITE_BLOCKED),
            "socket never filled"
        );
        for now in since..=drain_at {
            rig.fire(now);
            rig.flush(now);
            assert!(rig.conn(key).out.is_some(), "still blocked at {now}");
            assert!(!rig.closing(key));
        }

        // The client reads; each writable event (what the loop gets on `WRITABLE`)
        // clears WRITE_BLOCKED and lists the stream again; all at `drain_at`.
        let mut got = Vec::new();
        for _ in 0..1_000 {
            rig.table.writable(key);
            rig.flush(drain_at);
            client.drain_into(&mut got);
            if rig.conn(key).out.is_none() && !rig.table.has_work() {
                break;
            }
        }
        assert!(rig.conn(key).out.is_none(), "the queue never drained");
        assert!(got == event.frame[..], "drained bytes differ");
        assert!(!rig.conn(key).has(flags::WRITE_BLOCKED));

        // The keepalive: one interval after the drain's last write, within a wheel tick.
        let due = drain_at + K;
        let mut queued_at = None;
        for now in drain_at + 1..=due + TICK {
            rig.fire(now);
            if rig.conn(key).pending_bytes() > 0 {
                queued_at = Some(now);
                break;
            }
        }
        let Some(at) = queued_at else {
            panic!("no keepalive by {} (drained at {drain_at})", due + TICK);
        };
        assert!(
            (due..=due + TICK).contains(&at),
            "keepalive at {at}, due {due} (drained at {drain_at})"
        );
        assert_eq!(rig.conn(key).pending_bytes(), sse::KEEPALIVE.len());
        rig.flush(at);
        client.expect_exactly(b":\n");
        assert!(!rig.closing(key));
    }
}

#[test]
fn drain_gives_each_stream_its_own_retry_then_ends_it() {
    let mut rig = Rig::new();
    let now = 1_000;
    let (s1, mut c1) = rig.stream(now, &["a"], live());
    let (s2, mut c2) = rig.stream(now, &["b"], live());
    let (reading, mut reading_client) = rig.connect(now, now + 10_000);
    rig.flush(now);
    c1.expect_exactly(&head());
    c2.expect_exactly(&head());

    let mut asked = 0u64;
    rig.table.begin_drain(now + 1, || {
        asked += 1;
        sse::retry(100 * asked)
    });
    assert_eq!(asked, 2, "one retry per stream");
    assert!(rig.closing(reading), "nothing queued: closes at once");
    assert!(!rig.closing(s1) && !rig.closing(s2));

    rig.flush(now + 1);
    rig.reap();
    assert!(rig.table.get(reading).is_none());
    reading_client.expect_eof();
    // Slab order: the first stream got the first value.
    c1.expect(b"retry: 100\n");
    c1.expect_eof();
    c2.expect(b"retry: 200\n");
    c2.expect_eof();
    assert!(matches!(rig.conn(s1).state, ConnState::Lingering));
    assert!(matches!(rig.conn(s2).state, ConnState::Lingering));

    // Nothing more reaches them.
    rig.publish(&["a", "b"], "late", false, now + 2);
    assert_eq!(rig.stats.deliveries, 0);
    assert_eq!(rig.fire(now + 1 + LINGER_MS), [s1, s2]);
    rig.reap();
    assert!(rig.table.is_empty());
}

#[test]
fn a_token_closes_its_stream_at_exactly_its_deadline() {
    let mut rig = Rig::new();
    let start = 10_000;
    // One runs out before its first keepalive, one after two.
    let early = start + K / 2;
    let late = start + 2 * K + K / 3;
    let with_token = |d| Start {
        token_deadline: Some(d),
        ..live()
    };
    let (e, mut e_client) = rig.stream(start, &["a"], with_token(early));
    let (l, mut l_client) = rig.stream(start, &["b"], with_token(late));
    rig.flush(start);
    e_client.expect_exactly(&head());
    l_client.expect_exactly(&head());
    assert_eq!(rig.timer_at(e), Some(early));

    let mut closed_at = [None, None];
    for now in start..=start + 3 * K {
        rig.fire(now);
        for (i, key) in [e, l].into_iter().enumerate() {
            if closed_at[i].is_none() && rig.table.get(key).is_some_and(|c| c.has(flags::CLOSING)) {
                closed_at[i] = Some(now);
            }
        }
        rig.flush(now);
        rig.reap();
    }
    assert_eq!(closed_at, [Some(early), Some(late)]);
    e_client.expect_eof();
    l_client.expect(b":\n:\n");
    l_client.expect_eof();
}

#[test]
fn a_request_not_finished_by_its_deadline_is_closed_then() {
    let mut rig = Rig::new();
    let (key, mut client) = rig.connect(500, 3_500);
    let mut closed_at = None;
    for now in 500..=4_000 {
        rig.fire(now);
        if closed_at.is_none() && rig.table.get(key).is_some_and(|c| c.has(flags::CLOSING)) {
            closed_at = Some(now);
        }
        rig.reap();
    }
    assert_eq!(closed_at, Some(3_500));
    assert!(rig.table.is_empty());
    client.expect_eof();
}

#[test]
fn drain_stops_a_replay_at_its_retry() {
    let mut rig = Rig::new();
    let big = "x".repeat(20_000);
    let history: Vec<Rc<Event>> = (0..6)
        .map(|_| rig.publish(&["a"], &big, false, 0))
        .collect();
    let now = 1_000;
    let (key, mut client) = rig.stream(now, &["a"], replay_from(0));
    assert!(rig.conn(key).has(flags::REPLAYING));
    rig.table.begin_drain(now, || sse::retry(777));

    let mut got = Vec::new();
    for _ in 0..100 {
        rig.flush(now);
        client.drain_into(&mut got);
        if !rig.table.has_work() {
            break;
        }
        rig.table.writable(key);
    }
    // The batch already queued, then the retry; the replay does not go on after it.
    let mut want = head();
    want.extend(frames(&history[..4]));
    want.extend_from_slice(b"retry: 777\n");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "drained bytes differ");
    assert_eq!(rig.stats.events_replayed, 4);
    // And then it ends: lingering, no longer subscribed (it used to stay a replaying
    // stream and get keepalives after its retry).
    assert!(matches!(rig.conn(key).state, ConnState::Lingering));
    client.expect_eof();
}

#[test]
fn a_sweep_is_written_in_slices_and_a_later_event_joins_the_unwritten_queues() {
    let mut rig = Rig::new();
    let n = 2 * CONNS_PER_SLICE + 10;
    let mut streams: Vec<(u32, Client)> = (0..n).map(|_| rig.stream(0, &["a"], live())).collect();
    while rig.table.has_work() {
        rig.flush(0);
    }
    for (_, client) in &mut streams {
        client.expect(&head());
    }
    let first = rig.publish(&["a"], "one", false, 10);
    rig.flush(10);
    // One slice: the first CONNS_PER_SLICE listed streams are written, the rest wait.
    let written = |rig: &Rig| {
        streams
            .iter()
            .filter(|(k, _)| rig.conn(*k).pending_bytes() == 0)
            .count()
    };
    assert_eq!(written(&rig), CONNS_PER_SLICE);
    assert!(rig.table.has_work());
    // An event committed mid-sweep: queued behind `one` where `one` is still waiting,
    // listed again where it was written.
    let second = rig.publish(&["a"], "two", false, 11);
    let both = first.frame.len() + second.frame.len();
    let waiting = streams
        .iter()
        .filter(|(k, _)| rig.conn(*k).pending_bytes() == both)
        .count();
    assert_eq!(waiting, n - CONNS_PER_SLICE);
    let mut slices = 1;
    while rig.table.has_work() {
        rig.flush(11);
        slices += 1;
    }
    // The waiting streams took both events in one write: no extra slices for them.
    assert_eq!(slices, n.div_ceil(CONNS_PER_SLICE) + 1);
    let want = frames(&[first, second]);
    for (_, client) in &mut streams {
        client.expect(&want);
        client.expect_nothing();
    }
    assert_eq!(rig.stats.deliveries, 2 * n as u64);
}

/// Issue 28, item 1, as the loop met it: a producer's read commits event E on `secretA`,
/// later lines of the same read evict E (its quiet topic is forgotten, its slot freed),
/// and before E's fan-out a stream on a new topic `publicB` is given that slot. E must not
/// reach it: an event names its topics with the slot's generation.
#[test]
fn an_event_never_reaches_a_topic_that_took_its_forgotten_slot() {
    let mut rig = Rig::with_history(HistoryLimits {
        max_events: 1_000,
        max_age: 3_600_000,
        max_bytes: 3_000,
    });
    let secret = rig.accept(&["secretA"], "SECRET", false);
    rig.hub.commit(&secret);
    let slot = secret.topics[0].id;
    let mut later = Vec::new();
    while rig.hub.topics.lookup("secretA").is_some() {
        let e = rig.accept(&["other"], "0123456789", false);
        rig.hub.commit(&e);
        later.push(e);
        assert!(later.len() < 100, "secretA was never evicted");
    }
    // `Last-Event-ID: 0` (ids here are 1, 2, ...): events are gone, so the router plans a
    // `reset` with the horizon as the replay floor; nothing is retained on `publicB`, so
    // the stream is live at once.
    let names: Vec<Box<str>> = vec!["publicB".into()];
    let floor = rig.hub.evicted_up_to_names(&names);
    assert!(floor >= secret.id);
    let reset = b"event: reset\ndata: {}\n\n".to_vec();
    let start = Start {
        replay: Some((0, Some(reset.clone()))),
        replay_floor: Some(floor),
        retry_ms: RETRY_MS,
        ..Start::default()
    };
    let (key, mut client) = rig.stream(0, &["publicB"], start);
    assert_eq!(
        rig.hub.topics.lookup("publicB"),
        Some(slot),
        "the new topic took the forgotten one's slot"
    );
    // The fan-out of the read's events comes after the stream started.
    rig.table
        .fan_out(&secret, &rig.hub, 0, MAX_PENDING, &mut rig.stats);
    for e in &later {
        rig.table
            .fan_out(e, &rig.hub, 0, MAX_PENDING, &mut rig.stats);
    }
    rig.flush(0);
    assert!(
        !rig.conn(key).has(flags::REPLAYING),
        "nothing to replay: live"
    );
    assert!(!rig.closing(key));
    client.expect_exactly(&[head(), reset].concat());
    assert_eq!(rig.stats.deliveries, 0);
}

/// A closed connection's key left on the pending list, its slot reused by a new
/// connection that is listed too: the key is on the list twice, and the sweep visits the
/// connection once per listing (the stale entry is skipped), writing everything once.
#[test]
fn a_stale_pending_entry_is_skipped() {
    let mut rig = Rig::new();
    let (a, _ca) = rig.stream(0, &["t"], live());
    // `a` is listed (its head); it closes before the sweep reaches it.
    rig.table.close(a);
    rig.reap();
    let (b, mut cb) = rig.stream(0, &["t"], live());
    assert_eq!(a, b, "the slot is reused");
    assert_eq!(rig.table.pending.iter().filter(|&&k| k == b).count(), 2);
    rig.flush(0);
    assert!(rig.table.pending.is_empty());
    cb.expect_exactly(&head());
    let e = rig.publish(&["t"], "x", false, 0);
    rig.flush(0);
    cb.expect_exactly(&e.frame);
    assert_eq!(rig.stats.deliveries, 1);
}
