//! The link against a real `redis-server` (one per test, on a private Unix socket, and a
//! loopback port where a case needs TCP; persistence off; killed by pid on drop), driven
//! the way the loop drives it: a `mio::Poll` with the link's `Waker`, `submit`/`flush`,
//! then `poll` after each wake-up.

use super::*;
use mio::{Events, Poll, Token, Waker};
use redis::Commands;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "t";
const STREAM: &str = "t:{ev}";
const LAST: &str = "t:{ev}:last";

/// A `redis-server` child process; killed (SIGKILL, by its pid) on drop.
struct RedisServer {
    dir: tempfile::TempDir,
    /// 0: Unix socket only.
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> RedisServer {
        RedisServer::start_on(0)
    }

    /// Also listening on a free loopback port.
    fn start_with_tcp() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        RedisServer::start_on(port)
    }

    fn start_on(port: u16) -> RedisServer {
        let mut server = RedisServer {
            dir: tempfile::tempdir().expect("tempdir"),
            port,
            child: None,
        };
        server.spawn();
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("r.sock")
    }

    fn unix_url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn tcp_url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--unixsocket")
            .arg(self.socket())
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian package redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pong = redis::Client::open(self.unix_url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Killed and started again on the same socket and port: empty (no persistence).
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn con(&self) -> redis::Connection {
        redis::Client::open(self.unix_url())
            .and_then(|c| c.get_connection())
            .expect("test connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn options(url: &str) -> Options {
    Options {
        url: url.to_string(),
        key_prefix: PREFIX.into(),
        min_replicas: 0,
        replica_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(1),
        max_age: Duration::from_secs(3600),
        max_stream_events: 0,
        read_from: Vec::new(),
        read_linger: Duration::ZERO,
        write_linger: Duration::ZERO,
    }
}

fn req(topics: &[&str], data: &str) -> PublishRequest {
    PublishRequest {
        topics: topics.iter().map(|t| Box::from(*t)).collect(),
        event: None,
        data: data.into(),
        is_final: false,
        key: None,
    }
}

fn keyed(topic: &str, data: &str, key: &str) -> PublishRequest {
    PublishRequest {
        key: Some(key.into()),
        ..req(&[topic], data)
    }
}

/// The loop's side: a poll, the link, and everything it reported so far.
struct Node {
    poll: Poll,
    events: Events,
    link: Link,
    answers: BTreeMap<u64, Result<u64, String>>,
    last_answered: u64,
    entries: Vec<Entry>,
    gaps: Vec<(u64, String)>,
    started: Option<(u64, u64)>,
    ups: usize,
    downs: Vec<String>,
    /// Every report's kind, in order.
    log: Vec<String>,
}

impl Node {
    fn start(options: Options) -> Node {
        let poll = Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).expect("waker"));
        Node {
            link: Link::start(options, waker).expect("link"),
            poll,
            events: Events::with_capacity(8),
            answers: BTreeMap::new(),
            last_answered: 0,
            entries: Vec::new(),
            gaps: Vec::new(),
            started: None,
            ups: 0,
            downs: Vec::new(),
            log: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(report) = self.link.poll() {
            match report {
                Report::Answered(answers) => {
                    self.log.push(format!("answered {}", answers.len()));
                    for (seq, result) in answers {
                        assert!(seq > self.last_answered, "answers ascending, once each");
                        self.last_answered = seq;
                        self.answers.insert(seq, result);
                    }
                }
                Report::Started {
                    remembers_from,
                    last_id,
                } => {
                    assert!(self.started.is_none(), "Started is sent once");
                    // Entries before it are the start-up fill.
                    self.log.push("started".into());
                    self.started = Some((remembers_from, last_id));
                }
                Report::Entries(entries) => {
                    self.log.push(format!("entries {}", entries.len()));
                    for e in entries {
                        if let Some(prev) = self.entries.last() {
                            assert!(e.id > prev.id, "ids increase: {} after {}", e.id, prev.id);
                        }
                        self.entries.push(e);
                    }
                }
                Report::Gap { forget_up_to, why } => {
                    self.log.push(format!("gap {forget_up_to}: {why}"));
                    self.gaps.push((forget_up_to, why));
                }
                Report::Up => {
                    self.log.push("up".into());
                    self.ups += 1;
                }
                Report::Down(reason) => {
                    self.log.push(format!("down: {reason}"));
                    self.downs.push(reason);
                }
            }
        }
    }

    /// Polls (woken by the link) until `done` holds; panics after `timeout`.
    fn wait(&mut self, what: &str, timeout: Duration, done: impl Fn(&Node) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if done(self) {
                return;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {what}; reports: {:#?}",
                self.log
            );
            self.poll
                .poll(&mut self.events, Some(deadline - now))
                .expect("poll");
        }
    }

    fn wait_up(&mut self, ups: usize) {
        self.wait("up", Duration::from_secs(10), |n| n.ups >= ups);
    }

    fn wait_entries(&mut self, count: usize) {
        self.wait(&format!("{count} entries"), Duration::from_secs(5), |n| {
            n.entries.len() >= count
        });
    }

    /// Submits one batch, flushes it, waits for its answers.
    fn publish(&mut self, requests: Vec<PublishRequest>) -> Vec<Result<u64, String>> {
        let seqs: Vec<u64> = requests.into_iter().map(|r| self.link.submit(r)).collect();
        assert!(self.link.in_flight() >= seqs.len());
        self.link.flush();
        let last = *seqs.last().expect("a request");
        self.wait("answers", Duration::from_secs(5), |n| {
            n.answers.contains_key(&last)
        });
        seqs.iter().map(|s| self.answers[s].clone()).collect()
    }

    fn publish_ok(&mut self, requests: Vec<PublishRequest>) -> Vec<u64> {
        self.publish(requests)
            .into_iter()
            .map(|r| r.expect("published"))
            .collect()
    }
}

fn fields(con: &mut redis::Connection, id: u64) -> BTreeMap<String, String> {
    let at = format!("{id}-0");
    let v: Vec<(String, BTreeMap<String, String>)> = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg(&at)
        .arg(&at)
        .query(con)
        .expect("XRANGE");
    v.into_iter().next().expect("the entry").1
}

#[test]
fn ids_are_increasing_and_at_least_unix_micros() {
    let redis = RedisServer::start();
    let mut node = Node::start(options(&redis.unix_url()));
    let before = unix_us();
    node.wait_up(1);
    // An empty data set: nothing before now can be vouched for.
    let (remembers_from, last) = node.started.expect("started");
    assert_eq!(last, 0, "an empty stream");
    assert!(remembers_from >= before, "{remembers_from} < {before}");
    assert!(node.link.is_up());

    let before = unix_us();
    let mut ids = node.publish_ok(vec![req(&["a"], "1"), req(&["b"], "2"), req(&["a"], "3")]);
    ids.extend(node.publish_ok(vec![req(&["a"], "4")]));
    let after = unix_us();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(
        ids[0] >= before && ids[3] <= after + 1_000_000,
        "{before} {ids:?} {after}"
    );
    assert_eq!(node.link.in_flight(), 0);

    node.wait_entries(4);
    let read: Vec<u64> = node.entries.iter().map(|e| e.id).collect();
    assert_eq!(read, ids);
    assert_eq!(node.entries[0].prev, 0);
    for (i, e) in node.entries.iter().enumerate().skip(1) {
        assert_eq!(e.prev, ids[i - 1], "each entry names the one before");
    }
    let e = &node.entries[1];
    assert_eq!((e.topics.clone(), &*e.data), (vec![Box::from("b")], "2"));
    assert_eq!(e.published_unix_ms, e.id / 1000);
    assert!(node.gaps.is_empty(), "{:?}", node.log);
    assert_eq!(node.link.errors_total(), 0);
}

#[test]
fn two_links_on_one_redis_read_the_same_entries_in_the_same_order() {
    let redis = RedisServer::start_with_tcp();
    let mut a = Node::start(options(&redis.tcp_url()));
    a.wait_up(1);
    let batch = |from: usize, n: usize| -> Vec<PublishRequest> {
        (from..from + n)
            .map(|i| {
                let mut r = req(&[["x", "y", "z"][i % 3]], &format!("event {i}"));
                r.event = (i % 2 == 0).then(|| Box::from("even"));
                r
            })
            .collect()
    };
    let mut ids = a.publish_ok(batch(0, 20));

    // B starts on a stream that already holds 20 entries: it fills its history from it.
    let mut b = Node::start(options(&redis.unix_url()));
    b.wait_up(1);
    assert_eq!(b.started, Some((ids[0], ids[19])));
    ids.extend(a.publish_ok(batch(20, 20)));
    ids.extend(b.publish_ok(batch(40, 5)));
    ids.extend(a.publish_ok(batch(45, 5)));

    a.wait_entries(50);
    b.wait_entries(50);
    assert_eq!(a.entries, b.entries);
    let read: Vec<u64> = a.entries.iter().map(|e| e.id).collect();
    assert_eq!(read, ids);
    assert_eq!(&*a.entries[44].data, "event 44");
    assert_eq!(a.entries[44].event.as_deref(), Some("even"));
    assert_eq!(a.entries[45].event, None);
    assert!(
        a.gaps.is_empty() && b.gaps.is_empty(),
        "{:?} {:?}",
        a.log,
        b.log
    );
}

#[test]
fn a_multi_topic_publish_is_one_entry() {
    let redis = RedisServer::start();
    let mut node = Node::start(options(&redis.unix_url()));
    node.wait_up(1);
    let mut r = req(&["a", "b/c", "d"], "one for three");
    r.event = Some("ev".into());
    let id = node.publish_ok(vec![r])[0];
    node.wait_entries(1);
    let e = &node.entries[0];
    assert_eq!(e.id, id);
    assert_eq!(
        e.topics,
        vec![Box::from("a"), Box::from("b/c"), Box::from("d")]
    );
    assert_eq!(e.event.as_deref(), Some("ev"));
    assert!(!e.is_final);

    let mut con = redis.con();
    assert_eq!(con.xlen::<_, u64>(STREAM).unwrap(), 1);
    let f = fields(&mut con, id);
    assert_eq!(f["t"], "a b/c d");
    assert_eq!(f["e"], "ev");
    assert_eq!(f["d"], "one for three");
    assert_eq!(f["p"], "0");
    assert!(!f.contains_key("f"));
    assert_eq!(con.get::<_, String>(LAST).unwrap(), id.to_string());
}

#[test]
fn a_final_topic_refuses_later_publishes() {
    let redis = RedisServer::start();
    let mut node = Node::start(options(&redis.unix_url()));
    node.wait_up(1);
    let mut last_word = req(&["x"], "bye");
    last_word.is_final = true;
    let id = node.publish_ok(vec![last_word])[0];
    let answers = node.publish(vec![req(&["y", "x"], "too late"), req(&["y"], "fine")]);
    assert_eq!(answers[0], Err("topic x is final".to_string()));
    assert!(answers[1].is_ok());

    node.wait_entries(2);
    assert!(node.entries[0].is_final && node.entries[0].id == id);
    assert_eq!(&*node.entries[1].data, "fine");
    let mut con = redis.con();
    assert_eq!(con.xlen::<_, u64>(STREAM).unwrap(), 2);
    assert_eq!(fields(&mut con, id)["f"], "1");
    let ttl: i64 = con.pttl("t:{ev}:final:x").unwrap();
    assert!(ttl > 0 && ttl <= 3_600_000, "{ttl}");
}

#[test]
fn an_idempotency_key_returns_the_same_id_and_appends_once() {
    let redis = RedisServer::start();
    let mut node = Node::start(options(&redis.unix_url()));
    node.wait_up(1);
    let id = node.publish_ok(vec![keyed("a", "once", "k1")])[0];
    // A retry in a later batch, and twice in one batch.
    let again = node.publish_ok(vec![keyed("a", "once", "k1"), keyed("a", "once", "k1")]);
    assert_eq!(again, [id, id]);
    let other = node.publish_ok(vec![keyed("a", "twice", "k2")])[0];
    assert!(other > id);

    node.wait_entries(2);
    let mut con = redis.con();
    assert_eq!(con.xlen::<_, u64>(STREAM).unwrap(), 2);
    let ttl: i64 = con.pttl("t:{ev}:key:k1").unwrap();
    assert!(ttl > 0 && ttl <= 3_600_000, "{ttl}");
    // The key stands for the event's content too (`"key" … was used for a different event`).
    let stored = con.get::<_, String>("t:{ev}:key:k1").unwrap();
    assert_eq!(
        stored.split_once(' ').map(|(i, _)| i),
        Some(&*id.to_string())
    );
}

#[test]
fn redis_down_refuses_publishes_at_once_and_comes_back_up() {
    let mut redis = RedisServer::start();
    let mut node = Node::start(options(&redis.unix_url()));
    node.wait_up(1);
    node.publish_ok(vec![req(&["a"], "before")]);

    redis.kill();
    node.wait("down", Duration::from_secs(5), |n| !n.downs.is_empty());
    assert!(!node.link.is_up());
    assert!(node.link.errors_total() >= 1);
    let t = Instant::now();
    let answers = node.publish(vec![req(&["a"], "1"), req(&["b"], "2")]);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    for a in &answers {
        let why = a.as_ref().expect_err("refused");
        assert!(why.starts_with("not stored: redis unavailable: "), "{why}");
    }

    // A link that cannot connect at all still drops quickly.
    let stuck = Node::start(options(&redis.unix_url()));
    let t = Instant::now();
    drop(stuck);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );

    redis.restart();
    node.wait_up(2);
    assert_eq!(node.downs.len(), 1, "one Down per outage: {:?}", node.log);
    assert!(node.link.is_up());
    node.publish_ok(vec![req(&["a"], "after")]);
    node.wait("the entry after", Duration::from_secs(5), |n| {
        n.entries.last().is_some_and(|e| &*e.data == "after")
    });
    let t = Instant::now();
    drop(node);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn redis_restarted_empty_is_a_gap_and_new_ids_stay_above_old_ones() {
    let mut redis = RedisServer::start();
    let mut node = Node::start(options(&redis.unix_url()));
    node.wait_up(1);
    let first = node.publish_ok(vec![req(&["a"], "1"), req(&["a"], "2")]);
    node.wait_entries(2);

    // Another node issued an id an hour ahead: new ids follow it (and this node reads an
    // entry whose previous id it never saw: a gap).
    let ahead = unix_us() + 3_600_000_000;
    let mut con = redis.con();
    let _: () = con.set(LAST, ahead.to_string()).unwrap();
    let id = node.publish_ok(vec![req(&["a"], "3")])[0];
    assert_eq!(id, ahead + 1);
    node.wait_entries(3);
    assert_eq!(node.gaps.len(), 1);
    assert_eq!(node.gaps[0].0, ahead);
    assert!(first[1] < ahead);

    redis.restart();
    node.wait("up again and a gap", Duration::from_secs(10), |n| {
        n.ups >= 2 && n.gaps.len() >= 2
    });
    assert_eq!(node.gaps[1].0, ahead + 1, "{:?}", node.log);
    // The writer raised `last` to the highest id this node saw: without that, the next
    // id would be about now, an hour below what clients already hold.
    let id = node.publish_ok(vec![req(&["a"], "4")])[0];
    assert_eq!(id, ahead + 2);
    node.wait_entries(4);
    assert_eq!(node.entries[3].prev, ahead + 1);
    assert_eq!(node.gaps.len(), 2, "{:?}", node.log);
    let log = node.log.join("\n");
    let gap_at = log.find(&format!("gap {}", ahead + 1)).unwrap();
    let entries_at = log.rfind("entries").unwrap();
    assert!(
        gap_at < entries_at,
        "the gap before the entries after it: {log}"
    );
}

#[test]
fn maxlen_trims_the_stream() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    // Approximate trimming removes whole stream nodes: make them small.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("stream-node-max-entries")
        .arg(5)
        .query(&mut con)
        .unwrap();
    let mut node = Node::start(Options {
        max_stream_events: 10,
        ..options(&redis.unix_url())
    });
    node.wait_up(1);
    for round in 0..4 {
        let batch = (0..50)
            .map(|i| req(&["a"], &format!("{round}.{i}")))
            .collect();
        node.publish_ok(batch);
    }
    let len: u64 = con.xlen(STREAM).unwrap();
    assert!((10..=15).contains(&len), "{len}");
}

#[test]
fn max_age_trims_the_stream_and_expires_marks_and_keys() {
    let redis = RedisServer::start();
    let mut con = redis.con();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("stream-node-max-entries")
        .arg(1)
        .query(&mut con)
        .unwrap();
    let max_age = Duration::from_millis(200);
    let mut node = Node::start(Options {
        max_age,
        ..options(&redis.unix_url())
    });
    node.wait_up(1);
    let mut r = keyed("a", "old", "k");
    r.is_final = true;
    let old = node.publish_ok(vec![r])[0];
    let ttl: i64 = con.pttl("t:{ev}:final:a").unwrap();
    assert!(ttl > 0 && ttl <= 200, "{ttl}");
    let ttl: i64 = con.pttl("t:{ev}:key:k").unwrap();
    assert!(ttl > 0 && ttl <= 200, "{ttl}");
    // Waiting for the age to pass is the condition here.
    std::thread::sleep(max_age + Duration::from_millis(50));
    let new = node.publish_ok(vec![req(&["a"], "new")])[0];
    assert!(
        new > old,
        "the final mark expired with the history it protects"
    );
    let ids: Vec<(String, BTreeMap<String, String>)> = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(ids[0].0, format!("{new}-0"));
}

#[test]
fn wait_without_a_replica_is_not_confirmed_within_the_replica_timeout() {
    let redis = RedisServer::start();
    let mut node = Node::start(Options {
        min_replicas: 1,
        replica_timeout: Duration::from_millis(300),
        ..options(&redis.unix_url())
    });
    node.wait_up(1);
    let t = Instant::now();
    let answers = node.publish(vec![req(&["a"], "1"), req(&["a"], "2")]);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    for a in answers {
        assert_eq!(
            a,
            Err("not confirmed: only 0 of 1 replicas acknowledged within 300ms".to_string())
        );
    }
    // Stored all the same (the producer may retry with a key), but no node delivers them
    // while no replica holds them: a failover could still erase them.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        node.drain();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(node.entries.len(), 0, "delivered before a replica held it");
    assert!(node.link.is_up(), "a WAIT shortfall is not an outage");
}

#[test]
fn a_malformed_entry_is_a_gap_not_a_delivery() {
    let redis = RedisServer::start();
    let mut node = Node::start(options(&redis.unix_url()));
    node.wait_up(1);
    let id = node.publish_ok(vec![req(&["a"], "good")])[0];
    node.wait_entries(1);

    let mut con = redis.con();
    let bad = id + 1;
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg(format!("{bad}-0"))
        .arg(&[("p", id.to_string()), ("t", "a".into()), ("m", "1".into())])
        .query(&mut con)
        .unwrap();
    node.wait("the gap", Duration::from_secs(5), |n| !n.gaps.is_empty());
    assert_eq!(node.gaps[0].0, bad);
    assert!(
        node.gaps[0].1.contains("field d missing"),
        "{:?}",
        node.gaps
    );
    assert!(node.link.errors_total() >= 1);

    // The next publish follows the unreadable entry; no further gap.
    let next = node.publish_ok(vec![req(&["a"], "after")])[0];
    node.wait_entries(2);
    assert_eq!((node.entries[1].id, node.entries[1].prev), (next, bad));
    assert_eq!(node.gaps.len(), 1, "{:?}", node.log);
}

#[test]
fn an_unusable_url_is_refused_at_start() {
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
    let err = Link::start(options("http://example.com/"), waker)
        .err()
        .expect("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// A TCP forwarder to a Redis Unix socket that can re-point new connections elsewhere and
/// cut the writer's connections (those that sent `FUNCTION`), leaving the reader's alone.
struct Forwarder {
    port: u16,
    target: Arc<std::sync::Mutex<PathBuf>>,
    writers: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Forwarder {
    fn start(target: PathBuf) -> Forwarder {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let fwd = Forwarder {
            port: listener.local_addr().expect("addr").port(),
            target: Arc::new(std::sync::Mutex::new(target)),
            writers: Arc::default(),
            stop: Arc::default(),
        };
        let (target, writers, stop) = (fwd.target.clone(), fwd.writers.clone(), fwd.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let path = target.lock().unwrap().clone();
                let Ok(upstream) = UnixStream::connect(path) else {
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let (mut c_in, mut c_out) = (client.try_clone().unwrap(), client);
                let (mut u_in, mut u_out) = (upstream.try_clone().unwrap(), upstream);
                let writers = writers.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    let mut registered = false;
                    while let Ok(n @ 1..) = c_in.read(&mut buf) {
                        if !registered && buf[..n].windows(8).any(|w| w == b"FUNCTION") {
                            registered = true;
                            writers.lock().unwrap().push(c_in.try_clone().unwrap());
                        }
                        if u_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = u_out.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        fwd
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// New connections go to `target`; the writer's current connections are cut.
    fn fail_over_writers(&self, target: PathBuf) {
        *self.target.lock().unwrap() = target;
        for s in self.writers.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_reader_left_on_a_server_that_gets_no_writes_reconnects() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    let fwd = Forwarder::start(old.socket());
    let mut node = Node::start(options(&fwd.url()));
    node.wait_up(1);
    let first = node.publish_ok(vec![req(&["a"], "on the old server")])[0];
    node.wait_entries(1);

    // The writer moves to the new server; the reader stays connected to the old one,
    // where XREAD keeps returning nothing.
    fwd.fail_over_writers(new.socket());
    let lost = node.publish(vec![req(&["a"], "cut")]);
    assert!(
        lost[0]
            .as_ref()
            .is_err_and(|e| e.starts_with("not confirmed: ")),
        "{lost:?}"
    );
    node.wait_up(2);
    let moved = node.publish_ok(vec![req(&["a"], "on the new server")])[0];
    assert!(moved > first);

    // Within ~1 s the probe finds the address leading to the new server (or, at the
    // latest ~3 s after XREAD returned nothing while `moved` was acknowledged, the reader
    // presumes its connection half-dead); the reader reconnects there, finds another data
    // set, and reads on.
    node.wait("the reader to move", Duration::from_secs(8), |n| {
        n.entries.last().is_some_and(|e| e.id == moved)
    });
    assert!(
        node.downs
            .iter()
            .any(|d| d.contains("another server") || d.contains("half-dead")),
        "{:?}",
        node.log
    );
    assert_eq!(node.gaps.len(), 1, "{:?}", node.log);
    assert!(
        node.gaps[0].1.contains("epoch") && node.gaps[0].0 >= moved,
        "{:?}",
        node.gaps
    );
    assert_eq!(
        node.entries.last().map(|e| e.prev),
        Some(first),
        "B's last was raised"
    );
}

#[test]
fn a_key_reused_for_another_event_is_refused_and_nothing_is_appended() {
    let redis = RedisServer::start();
    let mut node = Node::start(options(&redis.unix_url()));
    node.wait_up(1);
    let id = node.publish_ok(vec![keyed("a", "one", "k1")])[0];
    let mut final_one = keyed("a", "one", "k1");
    final_one.is_final = true;
    let answers = node.publish(vec![
        keyed("a", "two", "k1"),
        keyed("b", "one", "k1"),
        final_one,
        keyed("a", "one", "k1"),
    ]);
    let refused = Err("\"key\" k1 was used for a different event".to_string());
    assert_eq!(
        answers,
        [refused.clone(), refused.clone(), refused, Ok(id)],
        "other data, other topics, final: refused; the same event: its id"
    );
    assert!(
        node.link.is_up(),
        "a refused event is not a failure of the link"
    );
    assert_eq!(redis.con().xlen::<_, u64>(STREAM).unwrap(), 1);
}

/// Every entry names the data set's epoch; a node whose position is a raised `last` (no
/// entry of its own) reconnects to the same server without a gap; a flushed data set is a
/// gap as soon as the next entry, of the new epoch, arrives.
#[test]
fn epochs_and_positions_across_reconnects() {
    let redis = RedisServer::start();
    let mut first = Node::start(options(&redis.unix_url()));
    first.wait_up(1);
    let id = first.publish_ok(vec![req(&["a"], "x")])[0];
    let mut con = redis.con();
    let epoch: String = con.get("t:{ev}:epoch").unwrap();
    assert_eq!(epoch.len(), 16, "{epoch}");
    assert_eq!(fields(&mut con, id).get("x"), Some(&epoch));
    // An empty stream whose `last` stays: the next node's position is that `last`.
    let _: () = redis::cmd("XTRIM")
        .arg(STREAM)
        .arg("MAXLEN")
        .arg(0)
        .query(&mut con)
        .unwrap();
    let mut node = Node::start(options(&redis.unix_url()));
    node.wait_up(1);
    assert_eq!(node.started, Some((id, id)));
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut con)
        .unwrap();
    assert!(killed >= 2, "the links' connections were cut ({killed})");
    node.wait_up(2);
    let next = node.publish_ok(vec![req(&["a"], "after the cut")])[0];
    node.wait_entries(1);
    assert_eq!(node.entries[0].id, next);
    assert!(node.gaps.is_empty(), "{:?}", node.log);

    // FLUSHALL under the nodes: the writer's next publish names an epoch that is gone.
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    let refused = node.publish(vec![req(&["a"], "into a flushed data set")]);
    assert!(
        refused[0]
            .as_ref()
            .is_err_and(|e| e.contains("the data set changed")),
        "{refused:?}"
    );
    node.wait_up(3);
    let after = node.publish_ok(vec![req(&["a"], "new epoch")])[0];
    assert!(after > next);
    // The gap is reported before the entry that revealed it (a later report).
    node.wait("a gap, then the entry", Duration::from_secs(5), |n| {
        !n.gaps.is_empty() && n.entries.last().is_some_and(|e| e.id == after)
    });
    assert!(node.gaps[0].0 >= next, "{:?}", node.log);
}

/// One command's reply as the writer reads it: error replies (also inside an array) are
/// values, not `Err`.
fn raw(con: &mut redis::Connection, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
    con.send_packed_command(&cmd.get_packed_command())?;
    con.recv_response()
}

/// `ssehub_publish_batch` called directly: the library loaded, the epoch set, one call.
fn call_batch(
    con: &mut redis::Connection,
    epoch: &str,
    requests: &[PublishRequest],
) -> redis::RedisResult<redis::Value> {
    let keys = keys::Keys::new(PREFIX);
    let stamp = keys::Stamp {
        epoch,
        node_now_us: 0,
    };
    raw(
        con,
        &keys::publish_batch(&keys, &options(""), requests.iter(), stamp),
    )
}

fn batch_setup(redis: &RedisServer) -> redis::Connection {
    let mut con = redis.con();
    let _: redis::Value = keys::load_library().query(&mut con).unwrap();
    let _: () = con.set("t:{ev}:epoch", "e1").unwrap();
    con
}

/// Each element of a batch call's reply: the id, or the error's text.
fn batch_results(v: redis::Value) -> Vec<Result<u64, String>> {
    let redis::Value::Array(values) = v else {
        panic!("an array: {v:?}");
    };
    values
        .into_iter()
        .map(|v| match v {
            redis::Value::ServerError(e) => Err(reply::error_text(&e)),
            v => reply::id(&v).ok_or_else(|| format!("{v:?}")),
        })
        .collect()
}

/// One call, many publishes: a keyed retry answers the stored id, a publish to a final topic
/// is refused in the middle while the ones around it are stored, ids increase and every
/// `p` names the entry before; `last` ends at the tail.
#[test]
fn a_batch_call_answers_each_event_and_chains_the_stored_ones() {
    let redis = RedisServer::start();
    let mut con = batch_setup(&redis);
    let mut closing = req(&["done"], "closing");
    closing.is_final = true;
    let first =
        batch_results(call_batch(&mut con, "e1", &[keyed("a", "one", "k1"), closing]).unwrap());
    let (k1, closed) = (first[0].clone().unwrap(), first[1].clone().unwrap());
    assert!(closed > k1);

    let mut final_too = req(&["b"], "last of b");
    final_too.is_final = true;
    let answers = batch_results(
        call_batch(
            &mut con,
            "e1",
            &[
                req(&["a"], "before"),
                keyed("a", "one", "k1"),
                req(&["a", "done"], "refused"),
                keyed("a", "other", "k1"),
                final_too,
                req(&["b"], "after b's final"),
                keyed("c", "new", "k2"),
                keyed("c", "new", "k2"),
                req(&["a"], "after"),
            ],
        )
        .unwrap(),
    );
    assert_eq!(answers.len(), 9);
    assert_eq!(answers[1], Ok(k1), "a retry: the stored id");
    assert_eq!(answers[2], Err("topic done is final".into()));
    assert_eq!(answers[3], Err("key used for a different event".into()));
    assert_eq!(answers[5], Err("topic b is final".into()));
    assert_eq!(answers[7], answers[6], "a key twice in one call: one entry");
    let stored: Vec<u64> = [0, 4, 6, 8]
        .iter()
        .map(|&i| answers[i].clone().unwrap())
        .collect();
    assert!(stored[0] > closed && stored.windows(2).all(|w| w[0] < w[1]));

    let entries: Vec<(String, BTreeMap<String, String>)> = con.xrange_all(STREAM).expect("XRANGE");
    let ids: Vec<u64> = entries
        .iter()
        .map(|(id, _)| reply::stream_id(id).unwrap().0)
        .collect();
    assert_eq!(ids, [vec![k1, closed], stored.clone()].concat());
    let prevs: Vec<u64> = entries
        .iter()
        .map(|(_, f)| f["p"].parse().unwrap())
        .collect();
    assert_eq!(
        prevs,
        [&[0][..], &ids[..ids.len() - 1]].concat(),
        "the p chain"
    );
    assert_eq!(entries[3].1["f"], "1");
    assert_eq!(entries[2].1["d"], "before");
    assert!(entries.iter().all(|(_, f)| f["x"] == "e1"));
    assert_eq!(con.get::<_, u64>(LAST).unwrap(), stored[3]);
    assert!(con.exists::<_, bool>("t:{ev}:final:b").unwrap());
    assert!(con.exists::<_, bool>("t:{ev}:key:k2").unwrap());

    // A call naming another epoch: refused whole, nothing stored.
    let refused = call_batch(&mut con, "e0", &[req(&["a"], "x"), req(&["a"], "y")]);
    let Ok(redis::Value::ServerError(e)) = refused else {
        panic!("an error reply: {refused:?}");
    };
    assert_eq!(reply::error_text(&e), "epoch changed");
    assert_eq!(con.xlen::<_, u64>(STREAM).unwrap(), 6);
    // An empty call stores nothing and answers nothing.
    assert!(batch_results(call_batch(&mut con, "e1", &[]).unwrap()).is_empty());
}

/// An unexpected error inside the Function after something was stored (here a key someone
/// else wrote with another type): that event and the later ones say so, and `last` still
/// ends at the stream's tail.
#[test]
fn an_error_midway_leaves_last_at_the_tail() {
    let redis = RedisServer::start();
    let mut con = batch_setup(&redis);
    let _: () = con.lpush("t:{ev}:key:odd", "x").unwrap();
    let answers = batch_results(
        call_batch(
            &mut con,
            "e1",
            &[
                req(&["a"], "stored"),
                keyed("a", "x", "odd"),
                req(&["a"], "not reached"),
            ],
        )
        .unwrap(),
    );
    let stored = answers[0].clone().unwrap();
    for a in &answers[1..] {
        assert!(
            a.as_ref().is_err_and(|e| e.starts_with("WRONGTYPE")),
            "{a:?}"
        );
    }
    assert_eq!(con.xlen::<_, u64>(STREAM).unwrap(), 1);
    assert_eq!(con.get::<_, u64>(LAST).unwrap(), stored);
}

/// The one-event `ssehub_publish` (nodes of the first protocol-7 version) shares the batch
/// call's rules and state.
#[test]
fn the_one_event_function_still_answers() {
    let redis = RedisServer::start();
    let mut con = batch_setup(&redis);
    let one = |con: &mut redis::Connection, topic: &str, is_final: &str, epoch: &str| {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("ssehub_publish")
            .arg(5)
            .arg(STREAM)
            .arg(LAST)
            .arg("t:{ev}:key")
            .arg("t:{ev}:epoch")
            .arg(format!("t:{{ev}}:final:{topic}"))
            .arg(3_600_000)
            .arg(0)
            .arg(is_final)
            .arg("")
            .arg("data")
            .arg(0)
            .arg(0)
            .arg(epoch)
            .arg(topic);
        raw(con, &cmd).unwrap()
    };
    let first = reply::id(&one(&mut con, "a", "1", "e1")).expect("an id");
    let next = batch_results(call_batch(&mut con, "e1", &[req(&["b"], "x")]).unwrap());
    assert!(next[0].clone().unwrap() > first);
    let refused = |v: redis::Value| match v {
        redis::Value::ServerError(e) => reply::error_text(&e),
        v => panic!("an error reply: {v:?}"),
    };
    assert_eq!(refused(one(&mut con, "a", "0", "e1")), "topic a is final");
    assert_eq!(refused(one(&mut con, "b", "0", "e0")), "epoch changed");
}

/// Batches queued while the writer is busy go out together, answered in order.
#[test]
fn batches_queued_behind_a_call_are_answered_in_order() {
    let redis = RedisServer::start();
    let mut node = Node::start(options(&redis.unix_url()));
    node.wait_up(1);
    let mut seqs = Vec::new();
    for turn in 0..50 {
        for i in 0..40 {
            seqs.push(node.link.submit(req(&["a"], &format!("{turn}.{i}"))));
        }
        node.link.flush();
    }
    let last = *seqs.last().unwrap();
    node.wait("answers", Duration::from_secs(10), |n| {
        n.answers.contains_key(&last)
    });
    let ids: Vec<u64> = seqs
        .iter()
        .map(|s| node.answers[s].clone().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    node.wait_entries(2000);
    assert!(node.gaps.is_empty(), "{:?}", node.log);
    assert_eq!(&*node.entries[1999].data, "49.39");
}
