//! Cluster mode (SPEC 7) against real `redis-server` processes and 2–3 real ssehub nodes:
//! one ordered stream for every node, resume on any node, and `reset` (never a silent gap)
//! when Redis loses data — restarted empty, failed over to a lagging replica, or trimmed
//! past a paused node; publishes refused or unconfirmed while Redis is unreachable, and a
//! retry with the same idempotency key stored once.
mod common;
use common::redis::{Forwarder, Mode, Redis, metric, node, node_on, redis_up};
use common::*;
use std::time::{Duration, Instant};

/// Reads events until `n` with ids arrived; returns (id, data) in order. `reset` events
/// (no id) are returned with id 0.
fn read_events(c: &mut Client, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.iter().filter(|(id, _)| *id > 0).count() < n {
        let block = c.read_event();
        if block.contains("event: reset") {
            got.push((0, event_data(&block)));
        } else if let Some(id) = event_id(&block) {
            got.push((id, event_data(&block)));
        }
    }
    got
}

fn ids(events: &[(u64, String)]) -> Vec<u64> {
    events.iter().map(|(id, _)| *id).collect()
}

/// `GET /readyz`: status and body.
fn readyz(s: &Server) -> (u16, String) {
    let mut c = Client::connect(s.addr);
    c.send("GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let (status, _, body) = c.read_response();
    (status, body.trim_end().to_string())
}

/// Publishes `{"topics":[..],"data":..}` and returns the answer line.
fn publish_to(p: &mut Producer, topics: &[&str], data: &str) -> String {
    let topics: Vec<String> = topics.iter().map(|t| json_str(t)).collect();
    p.request(&format!(
        "{{\"topics\":[{}],\"data\":{}}}",
        topics.join(","),
        json_str(data)
    ))
}

#[test]
fn every_node_delivers_every_event_once_in_the_same_order_with_the_same_ids() {
    let redis = Redis::start(&[]);
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis.url(), &[])).collect();
    // On every node: one stream on `a`, one on `b`, one on both.
    let mut subs: Vec<(usize, &str, Client)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for q in ["topic=a", "topic=b", "topic=a&topic=b"] {
            subs.push((i, q, n.subscribe(q)));
        }
    }
    let mut producers: Vec<Producer> = nodes.iter().map(Server::producer).collect();
    let mut published = Vec::new();
    for k in 0..30 {
        let topics: &[&str] = match k % 3 {
            0 => &["a"],
            1 => &["b"],
            _ => &["a", "b"],
        };
        let data = format!("e{k}");
        let answer = publish_to(&mut producers[k % 3], topics, &data);
        let id = parse_ok(&answer).unwrap_or_else(|| panic!("refused: {answer}"));
        published.push((id, data, topics.to_vec()));
    }
    let all_ids: Vec<u64> = published.iter().map(|(id, _, _)| *id).collect();
    assert!(
        all_ids.windows(2).all(|w| w[0] < w[1]),
        "ids from three nodes are one increasing sequence: {all_ids:?}"
    );
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert!(all_ids[0] > now_us - 60_000_000, "ids are >= Unix µs");
    for (node, query, c) in &mut subs {
        let wanted: Vec<(u64, String)> = published
            .iter()
            .filter(|(_, _, topics)| topics.iter().any(|t| query.contains(&format!("={t}"))))
            .map(|(id, data, _)| (*id, data.clone()))
            .collect();
        let got = read_events(c, wanted.len());
        assert_eq!(got, wanted, "node {node} stream {query}");
        // Nothing more: a multi-topic event reached the two-topic stream once.
        let extra = c.read_for(Duration::from_millis(200));
        assert!(
            !String::from_utf8_lossy(&extra).contains("id: "),
            "node {node} {query}: duplicate delivery {extra:?}"
        );
    }
}

#[test]
fn a_client_resumes_on_another_node_with_exactly_what_it_missed() {
    let redis = Redis::start(&[]);
    let (a, b) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    let mut pa = a.producer();
    let mut c = a.subscribe("topic=t");
    let first: Vec<u64> = (0..3).map(|i| pa.publish("t", &format!("x{i}"))).collect();
    assert_eq!(ids(&read_events(&mut c, 3)), first);
    drop(c);
    let missed: Vec<u64> = (0..4).map(|i| pa.publish("t", &format!("y{i}"))).collect();
    // Wait until b has read them (its metric counts committed events).
    assert!(wait_for(Duration::from_secs(5), || {
        metric(&b, "ssehub_events_published_total") == Some(7)
    }));
    let mut c = b.resume("topic=t", &first[2].to_string());
    let got = read_events(&mut c, 4);
    assert_eq!(ids(&got), missed, "exactly the missed events, no reset");
    let live = pa.publish("t", "live");
    assert_eq!(ids(&read_events(&mut c, 1)), [live]);
}

/// A resume from an id that node b has not read yet (b was stopped while a delivered it)
/// waits for b's reader instead of getting a spurious `reset`.
#[test]
fn a_resume_ahead_of_the_node_waits_for_it_instead_of_reset() {
    let redis = Redis::start(&[]);
    let (a, b) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    let mut pa = a.producer();
    pa.publish("t", "before");
    b.signal("STOP");
    let mut c = a.subscribe("topic=t");
    let seen = pa.publish("t", "seen on a");
    assert_eq!(ids(&read_events(&mut c, 1)), [seen]);
    // The request reaches b's accept queue while b is stopped; b handles it right after
    // it continues, possibly before its reader has read `seen`.
    let mut resumed = Client::connect(b.addr);
    resumed.send(&format!(
        "GET /events?topic=t HTTP/1.1\r\nHost: t\r\nLast-Event-ID: {seen}\r\n\r\n"
    ));
    b.signal("CONT");
    let head = resumed.read_head();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let after = pa.publish("t", "after");
    let got = read_events(&mut resumed, 1);
    assert_eq!(
        got,
        [(after, "after".to_string())],
        "no reset, nothing replayed twice"
    );
}

#[test]
fn redis_restarted_empty_resets_resuming_clients_and_ids_keep_increasing() {
    let mut redis = Redis::start(&[]);
    let (a, b) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    let mut pa = a.producer();
    let mut live = a.subscribe("topic=t");
    let before: Vec<u64> = (0..3).map(|i| pa.publish("t", &format!("b{i}"))).collect();
    assert_eq!(ids(&read_events(&mut live, 3)), before);
    assert!(wait_for(Duration::from_secs(5), || {
        metric(&b, "ssehub_events_published_total") == Some(3)
    }));
    redis.restart();
    // The live stream on a is told to come back (gap: a's last entry is gone).
    let rest = live
        .read_to_close(Duration::from_secs(15))
        .expect("the live stream was closed after the gap");
    assert!(
        String::from_utf8_lossy(&rest).contains("retry: "),
        "{rest:?}"
    );
    assert!(wait_for(Duration::from_secs(10), || redis_up(&a)
        == Some(true)
        && redis_up(&b) == Some(true)));
    // Resuming from before the loss, on either node: reset.
    for n in [&a, &b] {
        let mut c = n.resume("topic=t", &before[1].to_string());
        let first = c.read_event();
        assert!(
            first.contains("event: reset"),
            "{first:?}\n{}",
            n.log_text()
        );
    }
    // New ids exceed everything delivered before the loss.
    let next = pa.publish("t", "after");
    assert!(next > before[2], "{next} <= {}", before[2]);
}

/// The replica lags (the replication stream from the primary stops reaching it) when the
/// primary, having acknowledged an event, dies; the replica is promoted without it. The
/// nodes must not go on as if nothing happened.
#[test]
fn failover_to_a_lagging_replica_gives_reset_never_a_silent_gap() {
    let mut primary = Redis::start(&["--repl-diskless-sync-delay", "0"]);
    // The replica reaches the primary through a forwarder, so the test can hold back
    // what the primary sends it.
    let link = Forwarder::start(primary.port);
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &link.port.to_string()]);
    let fwd = Forwarder::start(primary.port);
    let (a, b) = (node(&fwd.url(), &[]), node(&fwd.url(), &[]));
    let mut pa = a.producer();
    let answer = publish_to(&mut pa, &["t"], "on both");
    let replicated = parse_ok(&answer).unwrap_or_else(|| panic!("{answer}\n{}", a.log_text()));
    assert!(
        wait_for(Duration::from_secs(15), || replica.stream_len("ssehub")
            == 1),
        "the replica did not sync: {}\n{}\nprimary XLEN {}",
        replica.cli(&["INFO", "replication"]),
        replica.cli(&["KEYS", "*"]),
        primary.stream_len("ssehub")
    );
    // The replica lags; the primary acknowledges an event the replica never gets.
    link.set_mode(Mode::SwallowReplies);
    let answer = publish_to(&mut pa, &["t"], "primary only");
    let lost = parse_ok(&answer).unwrap_or_else(|| panic!("{answer}\n{}", a.log_text()));
    assert!(wait_for(Duration::from_secs(5), || {
        metric(&b, "ssehub_events_published_total") == Some(2)
    }));
    primary.kill();
    assert_eq!(replica.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    assert_eq!(
        replica.stream_len("ssehub"),
        1,
        "the replica lacks the lost event"
    );
    fwd.retarget(replica.port);
    fwd.cut();
    assert!(
        wait_for(Duration::from_secs(15), || {
            a.log_contains("possible gap") && b.log_contains("possible gap")
        }),
        "{}\n---\n{}",
        a.log_text(),
        b.log_text()
    );
    // A client that saw only the replicated event must learn it may have missed one.
    let mut c = b.resume("topic=t", &replicated.to_string());
    let first = c.read_event();
    assert!(first.contains("event: reset"), "{first:?}");
    assert!(wait_for(Duration::from_secs(15), || redis_up(&a) == Some(true)));
    // The writer's connection may have been cut without it knowing yet (with readers on
    // replicas nothing on the node's side failed at once): a producer retries with its key.
    let line = r#"{"topic":"t","data":"after failover","key":"after-failover"}"#;
    let mut answer = pa.request(line);
    for _ in 0..5 {
        if parse_ok(&answer).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        answer = pa.request(line);
    }
    let next = parse_ok(&answer).unwrap_or_else(|| panic!("{answer}\n{}", a.log_text()));
    assert!(next > lost);
}

/// Node b is paused while the stream is trimmed past its last entry.
#[test]
fn a_node_paused_while_the_stream_is_trimmed_past_it_resets() {
    let redis = Redis::start(&[]);
    let trim = [("history", "max_stream_events = 4")];
    let (a, b) = (node(&redis.url(), &trim), node(&redis.url(), &trim));
    let mut pa = a.producer();
    let first = pa.publish("t", "seen by b");
    assert!(wait_for(Duration::from_secs(5), || {
        metric(&b, "ssehub_events_published_total") == Some(1)
    }));
    let mut live = b.subscribe("topic=t");
    b.signal("STOP");
    for i in 0..40 {
        pa.publish("t", &format!("while b sleeps {i}"));
    }
    assert!(redis.stream_len("ssehub") < 40, "the stream was trimmed");
    b.signal("CONT");
    let rest = live
        .read_to_close(Duration::from_secs(15))
        .expect("b closed its live stream after the gap");
    assert!(String::from_utf8_lossy(&rest).contains("retry: "));
    let mut c = b.resume("topic=t", &first.to_string());
    let block = c.read_event();
    assert!(
        block.contains("event: reset"),
        "{block:?}\n{}",
        b.log_text()
    );
}

#[test]
fn unreachable_redis_refuses_publishes_keeps_streams_and_recovers() {
    let redis = Redis::start(&[]);
    let fwd = Forwarder::start(redis.port);
    let a = node(&fwd.url(), &[("streams", "keepalive = \"300ms\"")]);
    let mut p = a.producer();
    let mut c = a.subscribe("topic=t");
    let before = p.publish("t", "before");
    assert_eq!(ids(&read_events(&mut c, 1)), [before]);
    assert_eq!(readyz(&a), (200, "ready".to_string()));
    fwd.set_mode(Mode::Refuse);
    assert!(wait_for(Duration::from_secs(10), || redis_up(&a) == Some(false)));
    let (status, reason) = readyz(&a);
    assert_eq!(status, 503, "{reason}");
    assert!(
        reason.starts_with("not ready: redis unavailable: "),
        "{reason}"
    );
    let started = Instant::now();
    let answer = publish_to(&mut p, &["t"], "while down");
    assert!(
        answer.starts_with("{\"ok\":false,\"error\":\"not stored: redis unavailable: "),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered promptly"
    );
    // The stream stays open: keepalives keep coming.
    let quiet = c.read_for(Duration::from_secs(1));
    assert!(String::from_utf8_lossy(&quiet).contains(":\n"), "{quiet:?}");
    assert!(metric(&a, "ssehub_redis_errors_total").unwrap_or(0) > 0);
    fwd.set_mode(Mode::Pass);
    assert!(wait_for(Duration::from_secs(15), || redis_up(&a) == Some(true)));
    assert_eq!(readyz(&a).0, 200);
    let after = p.publish("t", "after");
    assert_eq!(ids(&read_events(&mut c, 1)), [after], "not the refused one");
}

/// The reply to a publish is lost: the producer hears `not confirmed`; the event may
/// still appear, and a retry with the same `key` does not store it twice.
#[test]
fn a_lost_reply_is_not_confirmed_and_a_keyed_retry_is_stored_once() {
    let redis = Redis::start(&[]);
    let fwd = Forwarder::start(redis.port);
    let a = node(&fwd.url(), &[("cluster", "replica_timeout = \"200ms\"")]);
    let b = node(&redis.url(), &[]);
    let mut p = a.producer();
    let mut watcher = b.subscribe("topic=t");
    fwd.set_mode(Mode::SwallowReplies);
    let line = r#"{"topic":"t","data":"once","key":"order-17"}"#;
    let answer = p.request(line);
    assert!(
        answer.starts_with("{\"ok\":false,\"error\":\"not confirmed: "),
        "{answer}"
    );
    fwd.set_mode(Mode::Pass);
    fwd.cut();
    assert!(wait_for(Duration::from_secs(15), || redis_up(&a) == Some(true)));
    let retried = p.publish_json(line);
    let got = read_events(&mut watcher, 1);
    assert_eq!(got, [(retried, "once".to_string())]);
    let extra = watcher.read_for(Duration::from_millis(500));
    assert!(
        !String::from_utf8_lossy(&extra).contains("id: "),
        "stored twice: {extra:?}"
    );
    assert_eq!(redis.stream_len("ssehub"), 1);
    // A different key is a different event.
    let other = p.publish_json(r#"{"topic":"t","data":"twice","key":"order-18"}"#);
    assert!(other > retried);
}

#[test]
fn two_processes_share_one_port_with_reuse_port() {
    let redis = Redis::start(&[]);
    let port = common::redis::free_port();
    let http = [("http", "reuse_port = true")];
    let a = node_on(&redis.url(), port, &http);
    let b = node_on(&redis.url(), port, &http);
    assert_eq!(a.addr, b.addr);
    let mut clients: Vec<Client> = (0..24).map(|_| a.subscribe("topic=t")).collect();
    let id = a.producer().publish("t", "to all");
    for c in &mut clients {
        assert_eq!(ids(&read_events(c, 1)), [id]);
    }
    // Both processes hold some: stopping one closes only its share.
    drop(a);
    let mut closed = 0;
    for c in &mut clients {
        if c.read_to_close(Duration::from_millis(300)).is_some() {
            closed += 1;
        }
    }
    assert!(
        closed > 0 && closed < clients.len(),
        "{closed} of {} streams were on the stopped process",
        clients.len()
    );
    drop(b);
}

/// `POST /publish` in cluster mode: a body of events sent to one node reaches the other
/// node's streams in order with the ids the answers gave; a keyed retry over HTTP is
/// stored once; with Redis unreachable a JSON publish is `503` `not stored: …`.
#[test]
fn http_publishes_go_through_redis_to_every_node() {
    let secret = "cluster-publish-secret";
    let auth = ("auth", format!("secret = {secret:?}"));
    let redis = Redis::start(&[]);
    let fwd = Forwarder::start(redis.port);
    let a = node(&fwd.url(), &[(auth.0, &auth.1)]);
    let b = node(&redis.url(), &[(auth.0, &auth.1)]);
    let out = run_bin(
        &["token", "--secret", secret, "--publish", "t*"],
        b"",
        Duration::from_secs(10),
    );
    let token = out.stdout.trim().to_string();
    let mut on_b = b.subscribe("topic=t");
    let post = |body: &str, content_type: &str| {
        let mut c = Client::connect(a.addr);
        c.send(&format!(
            "POST /publish HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        c.read_response()
    };
    let mut body = String::new();
    for i in 0..50 {
        body.push_str(&format!(
            "{{\"topic\":\"t\",\"data\":\"e{i}\",\"key\":\"k{i}\"}}\n"
        ));
    }
    let (status, _, answers) = post(&body, "application/x-ndjson");
    assert_eq!(status, 200, "{answers}");
    let sent: Vec<u64> = answers.lines().map(|l| parse_ok(l).unwrap()).collect();
    assert_eq!(sent.len(), 50);
    let got = read_events(&mut on_b, 50);
    assert_eq!(
        ids(&got),
        sent,
        "node B delivers what node A answered, in order"
    );
    assert_eq!(got[49].1, "e49");
    // The same key again: answered with the first id, not stored twice.
    let (status, _, answer) = post(
        r#"{"topic":"t","data":"e7","key":"k7"}"#,
        "application/json",
    );
    assert_eq!(
        (status, parse_ok(&answer)),
        (200, Some(sent[7])),
        "{answer}"
    );
    // Redis unreachable from node A: 503 with the reason.
    fwd.set_mode(Mode::Refuse);
    assert!(wait_for(Duration::from_secs(10), || redis_up(&a) == Some(false)));
    let (status, _, answer) = post(r#"{"topic":"t","data":"down"}"#, "application/json");
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer.starts_with("{\"ok\":false,\"error\":\"not stored: redis unavailable: "),
        "{answer}"
    );
    let quiet = on_b.read_for(Duration::from_millis(500));
    assert!(
        !String::from_utf8_lossy(&quiet).contains("data: "),
        "nothing published: {quiet:?}"
    );
}

/// `POST /publish` in cluster mode while `commit::MAX_IN_FLIGHT` (65,536) publishes wait
/// for Redis: a body completed meanwhile waits for room (as a producer's next lines do),
/// then is published; every line of both bodies is answered `ok`, the later one's ids
/// after the earlier one's.
#[test]
fn an_http_publish_waits_while_the_queue_to_redis_is_full() {
    let secret = "cluster-queue-secret";
    let redis = Redis::start(&[]);
    let a = node(
        &redis.url(),
        &[
            ("auth", &format!("secret = {secret:?}")),
            ("publish", "max_body_bytes = 8388608"),
        ],
    );
    let token = run_bin(
        &["token", "--secret", secret, "--publish", "*"],
        b"",
        Duration::from_secs(10),
    )
    .stdout
    .trim()
    .to_string();
    let request = |lines: usize, tag: &str| {
        let mut body = String::with_capacity(lines * 32);
        for i in 0..lines {
            body.push_str(&format!("{{\"topic\":\"q\",\"data\":\"{tag}{i}\"}}\n"));
        }
        format!(
            "POST /publish HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut big = Client::connect(a.addr);
    big.set_timeout(Duration::from_secs(60));
    let mut small = Client::connect(a.addr);
    small.set_timeout(Duration::from_secs(60));
    // 200,000 publishes take Redis well over a second; the small body comes once the
    // big one has been read and sent on (loopback: a few tens of milliseconds).
    big.send(&request(200_000, "a"));
    std::thread::sleep(Duration::from_millis(300));
    small.send(&request(10, "b"));
    let (status, _, answers) = big.read_response();
    assert_eq!(status, 200);
    let first: Vec<u64> = answers.lines().map(|l| parse_ok(l).unwrap()).collect();
    assert_eq!(first.len(), 200_000);
    let (status, _, answers) = small.read_response();
    assert_eq!(status, 200);
    let second: Vec<u64> = answers.lines().map(|l| parse_ok(l).unwrap()).collect();
    assert_eq!(second.len(), 10);
    assert!(
        second[0] > first[199_999],
        "the waiting body went after the full queue"
    );
    assert!(
        a.log_contains("publish over HTTP waits for room in the queue to Redis"),
        "the second body did not wait: the queue never filled"
    );
}
