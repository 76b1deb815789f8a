//! Cluster mode (protocol 7) under injected faults, against real `redis-server` processes
//! and real nodes: Redis restarted empty while a node is paused, a node started on an
//! empty Redis, a failover to a replica whose clock is behind, a node that has not read
//! Redis yet, a writer left on a demoted primary, two primaries for a while, and smaller
//! cases. Subscribers are recorded on their own threads (reconnecting with
//! `Last-Event-ID` as a browser does) and every producer answer is logged; a checker
//! then flags any event that exists but was skipped without `reset`, and any duplicate or
//! reordering (tests/common/faults.rs).
mod common;
use common::faults::{
    AckLog, Delivery, Outcome, Publisher, RecOptions, Recorder, SubRecord, Targets,
    build_clock_shim, check, now_us, redis_time_us, summary,
};
use common::redis::{Forwarder, Mode, Redis, metric, node, node_unchecked, redis_up, wait_synced};
use common::*;
use std::time::{Duration, Instant};

// ---- Shared steps ---------------------------------------------------------------------------

/// Publishes a sentinel through `p` (retrying until ok, up to 15 s), waits until every
/// recorder delivered it, stops them and fails with a report when the checker flags
/// anything or a recorder never got the sentinel.
fn finish(p: &mut Publisher, recs: &mut [&mut Recorder], acks: &AckLog, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let sentinel = loop {
        if let Some(id) = p.publish("t", "sentinel") {
            break Some(id);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut problems = Vec::new();
    match sentinel {
        None => problems.push(format!(
            "the sentinel was never acknowledged; last answers: {:?}",
            acks.all()
                .iter()
                .rev()
                .take(3)
                .map(|a| a.answer.clone())
                .collect::<Vec<_>>()
        )),
        Some(id) => {
            for r in recs.iter() {
                if !r.wait_for_id(id, Duration::from_secs(10)) {
                    problems.push(format!(
                        "{} never delivered the sentinel {id} (within 10 s)",
                        r.name
                    ));
                }
            }
        }
    }
    for r in recs.iter_mut() {
        r.stop();
    }
    let subs: Vec<SubRecord> = recs.iter().map(|r| r.record_of()).collect();
    problems.extend(check(&subs, &acks.all()));
    if std::env::var_os("FAULTS_VERBOSE").is_some() {
        for s in &subs {
            eprintln!("{context}: {}", summary(s));
        }
        let mut answers: Vec<String> = acks
            .all()
            .iter()
            .filter(|a| parse_ok(&a.answer).is_none())
            .map(|a| a.answer.clone())
            .collect();
        answers.dedup();
        eprintln!(
            "{context}: {} ok; other answers: {answers:?}",
            acks.count(|a| matches!(a.outcome, Outcome::Ok(_)))
        );
    }
    if !problems.is_empty() {
        let shown: Vec<String> = problems
            .iter()
            .take(12)
            .map(|p| {
                if p.len() > 1200 {
                    format!(
                        "{}…",
                        &p[..p.char_indices().nth(1200).map_or(p.len(), |c| c.0)]
                    )
                } else {
                    p.clone()
                }
            })
            .collect();
        panic!(
            "{context}: {} violation(s):\n  {}\n--- subscribers:\n  {}\n--- acks: {} ok, {} maybe, {} refused",
            problems.len(),
            shown.join("\n  "),
            subs.iter().map(summary).collect::<Vec<_>>().join("\n  "),
            acks.count(|a| matches!(a.outcome, Outcome::Ok(_))),
            acks.count(|a| a.outcome == Outcome::Maybe),
            acks.count(|a| a.outcome == Outcome::Refused),
        );
    }
}

/// `GET /readyz` of a node: status and body.
fn readyz(s: &Server) -> (u16, String) {
    let mut c = Client::connect(s.addr);
    c.send("GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let (status, _, body) = c.read_response();
    (status, body.trim_end().to_string())
}

/// Waits until every recorder has a stream open (so that it sees what is published next).
fn wait_open(recs: &[&Recorder]) {
    for r in recs {
        assert!(
            r.wait_open(Duration::from_secs(10)),
            "{} has no open stream: {:?}",
            r.name,
            r.failures()
        );
    }
}

/// Publishes on `p` until `n` answers were ok (pausing 50 ms after a refusal), within
/// `timeout`; the ids.
fn publish_ok(p: &mut Publisher, n: usize, prefix: &str, timeout: Duration) -> Vec<u64> {
    let deadline = Instant::now() + timeout;
    let mut ids = Vec::new();
    let mut i = 0;
    while ids.len() < n && Instant::now() < deadline {
        match p.publish("t", &format!("{prefix}{i}")) {
            Some(id) => ids.push(id),
            None => std::thread::sleep(Duration::from_millis(50)),
        }
        i += 1;
    }
    ids
}

// ---- The checker itself ---------------------------------------------------------------------

fn sub(name: &str, ds: Vec<Delivery>) -> SubRecord {
    SubRecord {
        name: name.into(),
        topic: "t".into(),
        deliveries: ds,
    }
}

fn open(resume: Option<u64>) -> Delivery {
    Delivery::Open {
        node: "127.0.0.1:1".parse().unwrap(),
        resume,
    }
}

fn ev(id: u64) -> Delivery {
    Delivery::Event(id, format!("d{id}"))
}

fn closed() -> Delivery {
    Delivery::Closed {
        retry: true,
        hop: false,
    }
}

#[test]
fn checker_flags_a_silent_gap_known_from_another_subscriber_or_an_ack() {
    let acks = AckLog::new();
    acks.push("t", "d25", r#"{"ok":true,"id":"25"}"#);
    acks.push(
        "t",
        "d26",
        r#"{"ok":false,"error":"not confirmed: timeout"}"#,
    );
    let a = sub(
        "a",
        vec![open(None), ev(10), ev(20), closed(), open(Some(20)), ev(30)],
    );
    let b = sub(
        "b",
        vec![open(None), ev(10), ev(15), ev(20), ev(25), ev(30)],
    );
    let v = check(&[a, b], &acks.all());
    assert_eq!(v.len(), 2, "{v:#?}");
    assert!(
        v[0].starts_with("a: silent gap between #1 Event(10) and #2 Event(20): missing 1 [15"),
        "{v:#?}"
    );
    assert!(
        v[1].starts_with("a: silent gap between #2 Event(20) and #5 Event(30): missing 1 [25"),
        "{v:#?}"
    );
}

#[test]
fn checker_accepts_a_gap_with_a_reset_between() {
    let acks = AckLog::new();
    for id in [10, 15, 20, 25, 30] {
        acks.push(
            "t",
            &format!("d{id}"),
            &format!("{{\"ok\":true,\"id\":\"{id}\"}}"),
        );
    }
    let a = sub(
        "a",
        vec![
            open(None),
            ev(10),
            closed(),
            open(Some(10)),
            Delivery::Reset,
            ev(20),
            ev(25),
            ev(30),
        ],
    );
    assert_eq!(check(&[a], &acks.all()), Vec::<String>::new());
    // The same without the reset is a gap; a first id not above the resume id after a
    // reset is flagged too.
    let b = sub(
        "b",
        vec![
            open(None),
            ev(10),
            closed(),
            open(Some(10)),
            ev(20),
            ev(25),
            ev(30),
        ],
    );
    let c = sub(
        "c",
        vec![
            open(None),
            ev(20),
            closed(),
            open(Some(20)),
            Delivery::Reset,
            ev(15),
            ev(30),
        ],
    );
    let v = check(&[b, c], &acks.all());
    assert!(
        v.iter()
            .any(|l| l
                .starts_with("b: silent gap between #1 Event(10) and #4 Event(20): missing 1 [15")),
        "{v:#?}"
    );
    assert!(
        v.iter().any(|l| l.starts_with("c: out of order id 15")),
        "{v:#?}"
    );
}

#[test]
fn checker_flags_ids_issued_below_what_was_delivered_even_with_a_later_reset() {
    let acks = AckLog::new();
    acks.push("t", "d15", r#"{"ok":true,"id":"15"}"#);
    // 15 appeared after the subscriber had passed it (10 then 20).
    let late = sub(
        "late",
        vec![
            open(None),
            ev(10),
            ev(20),
            closed(),
            open(Some(20)),
            Delivery::Reset,
            ev(30),
        ],
    );
    let never = sub(
        "never",
        vec![open(None), ev(10), ev(20), closed(), open(Some(20)), ev(30)],
    );
    let v = check(&[late, never], &acks.all());
    assert_eq!(v.len(), 2, "{v:#?}");
    for (line, name) in v.iter().zip(["late", "never"]) {
        assert!(
            line.starts_with(&format!(
                "{name}: silent gap between #1 Event(10) and #2 Event(20): missing 1 [15"
            )),
            "{v:#?}"
        );
    }
}

#[test]
fn checker_flags_a_duplicate_a_reordering_a_missing_tail_and_two_data_for_one_id() {
    let acks = AckLog::new();
    acks.push("t", "d40", r#"{"ok":true,"id":"40"}"#);
    acks.push("t", "other", r#"{"ok":true,"id":"10"}"#);
    let a = sub(
        "a",
        vec![
            open(None),
            ev(10),
            ev(20),
            closed(),
            open(Some(20)),
            ev(20),
            ev(30),
        ],
    );
    let b = sub("b", vec![open(None), ev(10), ev(30), ev(20)]);
    let v = check(&[a, b], &acks.all());
    assert!(
        v.iter()
            .any(|l| l.starts_with("id 10 on \"t\" has two data")),
        "{v:#?}"
    );
    assert!(
        v.iter().any(|l| l.starts_with("a: duplicate id 20")),
        "{v:#?}"
    );
    assert!(
        v.iter().any(|l| l.starts_with("b: out of order id 20")),
        "{v:#?}"
    );
    assert!(v.iter().any(|l| l.starts_with("a: never delivered after its last #6 Event(30): missing 1 [40")), "{v:#?}");
    assert!(
        v.iter()
            .any(|l| l.starts_with("b: silent gap between #1 Event(10) and #2 Event(30)")),
        "{v:#?}"
    );
}

// ---- Held cases: must pass before and after the fixes ----------------------------------------

/// No fault: three nodes, producers on all three, a subscriber that hops to the next node
/// every 8 events (resuming with `Last-Event-ID`) and one fixed subscriber per node.
#[test]
fn held_no_fault_hopping_subscriber_sees_everything_once_without_reset() {
    let redis = Redis::start(&[]);
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis.url(), &[])).collect();
    let acks = AckLog::new();
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let mut hopper = Recorder::start(
        "hopper",
        "t",
        Targets::Rotate(addrs),
        RecOptions {
            pause: Duration::from_millis(100),
            hop_every: Some(8),
        },
    );
    let mut fixed: Vec<Recorder> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Recorder::on(&format!("fixed@{i}"), n, "t"))
        .collect();
    wait_open(&[&hopper]);
    wait_open(&fixed.iter().collect::<Vec<_>>());
    let mut pubs: Vec<Publisher> = nodes.iter().map(|n| Publisher::new(n, &acks)).collect();
    for k in 0..120 {
        pubs[k % 3].must("t", &format!("e{k}"));
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut recs: Vec<&mut Recorder> = vec![&mut hopper];
    recs.extend(fixed.iter_mut());
    finish(&mut pubs[0], &mut recs, &acks, "no fault");
    let opens = hopper.count(|d| matches!(d, Delivery::Open { .. }));
    assert!(opens >= 10, "the hopper reconnected only {opens} times");
    for r in std::iter::once(&hopper).chain(fixed.iter()) {
        assert_eq!(
            r.count(|d| *d == Delivery::Reset),
            0,
            "{}",
            summary(&r.record_of())
        );
    }
}

/// Redis is paused (SIGSTOP) for 3 s while two nodes publish; some answers may be
/// `not confirmed` or `not stored`, but no subscriber may silently miss an event.
#[test]
fn held_redis_paused_for_3s_while_publishing_no_silent_gap() {
    let redis = Redis::start(&[]);
    let mut t = two_nodes(&redis, &[]);
    let pid = redis.pid().to_string();
    let mut k = 0;
    t.publish_for(Duration::from_secs(1), &mut k);
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(stop.success());
    let resume = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status();
    });
    t.publish_for(Duration::from_secs(5), &mut k);
    resume.join().unwrap();
    t.publish_for(Duration::from_secs(1), &mut k);
    t.finish("redis paused 3 s");
}

/// Publishes on `pa` and `pb` in turn, one every 50 ms, for `until`.
fn publish_for(until: Duration, pa: &mut Publisher, pb: &mut Publisher, k: &mut usize) {
    let end = Instant::now() + until;
    while Instant::now() < end {
        let p = if k.is_multiple_of(2) {
            &mut *pa
        } else {
            &mut *pb
        };
        p.publish("t", &format!("e{k}"));
        *k += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two nodes on one Redis, each with a recording subscriber on `t` (streams open) and a
/// publisher, all answers in one log.
struct Two {
    /// Kept so that node A runs as long as the test.
    _a: Server,
    b: Server,
    acks: AckLog,
    ra: Recorder,
    rb: Recorder,
    pa: Publisher,
    pb: Publisher,
}

fn two_nodes(redis: &Redis, extra: &[(&str, &str)]) -> Two {
    let (a, b) = (node(&redis.url(), extra), node(&redis.url(), extra));
    let acks = AckLog::new();
    let ra = Recorder::on("sub@A", &a, "t");
    let rb = Recorder::on("sub@B", &b, "t");
    wait_open(&[&ra, &rb]);
    let (pa, pb) = (Publisher::new(&a, &acks), Publisher::new(&b, &acks));
    Two {
        _a: a,
        b,
        acks,
        ra,
        rb,
        pa,
        pb,
    }
}

impl Two {
    /// Publishes on A and B in turn, one every 50 ms, for `until`.
    fn publish_for(&mut self, until: Duration, k: &mut usize) {
        publish_for(until, &mut self.pa, &mut self.pb, k);
    }

    /// `finish` with A's publisher and both recorders.
    fn finish(&mut self, context: &str) {
        finish(
            &mut self.pa,
            &mut [&mut self.ra, &mut self.rb],
            &self.acks,
            context,
        );
    }
}

/// Redis with `appendonly` (fsync every second) is killed and restarted from its AOF while
/// two nodes publish: what the AOF kept comes back, what it lost is announced.
#[test]
fn held_redis_with_appendonly_killed_and_restarted_no_silent_gap() {
    let mut redis = Redis::start(&["--appendonly", "yes", "--appendfsync", "everysec"]);
    let mut t = two_nodes(&redis, &[]);
    let mut k = 0;
    t.publish_for(Duration::from_millis(1500), &mut k);
    let before = redis.stream_len("ssehub");
    redis.restart();
    assert!(
        redis.stream_len("ssehub") > 0 && before > 0,
        "the AOF brought the stream back ({before} entries before)"
    );
    t.publish_for(Duration::from_secs(3), &mut k);
    t.finish("appendonly redis killed");
}

/// Hand edits an operator might make: `FUNCTION DELETE` (the writer reloads it),
/// `XTRIM MAXLEN 0` and `XTRIM MINID` past what the nodes delivered.
#[test]
fn held_function_delete_and_trims_by_hand_no_silent_gap() {
    let redis = Redis::start(&[]);
    let mut t = two_nodes(&redis, &[]);
    let mut k = 0;
    t.publish_for(Duration::from_millis(500), &mut k);
    assert_eq!(redis.cli(&["FUNCTION", "DELETE", "ssehub"]), "OK");
    t.publish_for(Duration::from_secs(1), &mut k);
    assert!(
        t.acks.count(|a| a.answer.contains("Function not found")) > 0,
        "a publish met the deleted Function"
    );
    redis.cli(&["XTRIM", "ssehub:{ev}", "MAXLEN", "0"]);
    t.publish_for(Duration::from_secs(1), &mut k);
    let minid = format!("{}-0", now_us());
    redis.cli(&["XTRIM", "ssehub:{ev}", "MINID", &minid]);
    t.publish_for(Duration::from_secs(1), &mut k);
    t.finish("function delete and trims");
}

/// Node B is paused for longer than `history.max_age` while A publishes (the stream is
/// trimmed by age past B's position).
#[test]
fn held_node_paused_past_max_age_no_silent_gap() {
    let redis = Redis::start(&[]);
    let mut t = two_nodes(&redis, &[("history", "max_age = \"2s\"")]);
    publish_ok(&mut t.pa, 5, "before", Duration::from_secs(5));
    t.b.signal("STOP");
    let end = Instant::now() + Duration::from_secs(3);
    let mut i = 0;
    while Instant::now() < end {
        t.pa.publish("t", &format!("while B sleeps {i}"));
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    t.b.signal("CONT");
    publish_ok(&mut t.pa, 5, "after", Duration::from_secs(5));
    assert!(
        wait_for(Duration::from_secs(5), || t.b.log_contains("possible gap")),
        "B's position was trimmed by age while it slept: {}",
        t.b.log_text()
    );
    t.finish("node paused past max_age");
}

// ---- Scenarios found by the review (fail before the fixes) -----------------------------------

/// 1. Node A is paused while B publishes 50 events and Redis is then restarted empty; A
///    comes back while B cannot reach Redis, so nothing in Redis tells A about B's events.
///    A's subscriber must get `reset` rather than resume silently past them.
#[test]
fn s1_lagging_node_after_redis_data_loss_resets_its_subscribers() {
    let mut redis = Redis::start(&[]);
    let (fa, fb) = (Forwarder::start(redis.port), Forwarder::start(redis.port));
    let (a, b) = (node(&fa.url(), &[]), node(&fb.url(), &[]));
    let acks = AckLog::new();
    let mut ra = Recorder::on("sub@A", &a, "t");
    let mut rb = Recorder::on("sub@B", &b, "t");
    wait_open(&[&ra, &rb]);
    let mut pa = Publisher::new(&a, &acks);
    let mut pb = Publisher::new(&b, &acks);
    let first = pa.must("t", "first");
    assert!(
        ra.wait_for_id(first, Duration::from_secs(5))
            && rb.wait_for_id(first, Duration::from_secs(5))
    );
    a.signal("STOP");
    let ids: Vec<u64> = (0..50).map(|i| pb.must("t", &format!("b{i}"))).collect();
    assert!(
        rb.wait_for_id(ids[49], Duration::from_secs(5)),
        "{}",
        summary(&rb.record_of())
    );
    redis.restart();
    fb.set_mode(Mode::Refuse);
    a.signal("CONT");
    let after = publish_ok(&mut pa, 5, "a", Duration::from_secs(15));
    assert_eq!(after.len(), 5, "A did not come back: {}", a.log_text());
    fb.set_mode(Mode::Pass);
    finish(
        &mut pa,
        &mut [&mut ra, &mut rb],
        &acks,
        "s1 lagging node after data loss",
    );
}

/// 2. A node started on an empty Redis (restarted without persistence): (id of the third
///    of 10 events, the last of them, the node) once the 10 events are lost.
fn s2_setup() -> (Redis, u64, u64, Server) {
    let mut redis = Redis::start(&[]);
    let a = node(&redis.url(), &[]);
    let mut p = a.producer();
    let mut live = a.subscribe("topic=t");
    let ids: Vec<u64> = (0..10).map(|i| p.publish("t", &format!("e{i}"))).collect();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        if let Some(id) = event_id(&live.read_event()) {
            seen.push(id);
        }
    }
    assert_eq!(seen, ids[..3]);
    drop(live);
    drop(p);
    drop(a);
    redis.restart();
    let c = node(&redis.url(), &[]);
    (redis, seen[2], ids[9], c)
}

/// What a resume from `id` gets within 2 s after its head and `retry:` line, and whether
/// the node closed the stream.
fn resume_answer(c: &Server, id: u64) -> (String, bool) {
    let mut r = c.resume("topic=t", &id.to_string());
    match r.read_to_close(Duration::from_secs(2)) {
        Some(rest) => (String::from_utf8_lossy(&rest).into_owned(), true),
        None => (
            String::from_utf8_lossy(&r.read_for(Duration::from_millis(1))).into_owned(),
            false,
        ),
    }
}

/// 2a. Right after the start, nothing published since the loss: a resume from before the
///     loss gets `reset`.
#[test]
fn s2a_node_started_on_an_empty_redis_resets_a_resume_at_once() {
    let (_redis, id3, last, c) = s2_setup();
    let asked = Instant::now();
    let (got, closed) = resume_answer(&c, id3);
    if !got.starts_with("event: reset") {
        // For the report: what a client coming back a second later gets.
        let took = asked.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let (again, closed_again) = resume_answer(&c, id3);
        panic!(
            "a resume from {id3} (events up to {last} lost with Redis) on a node started on \
             an empty Redis, nothing published since, got {got:?} (closed: {closed}, after \
             {took:?}) instead of reset first; 1 s later: {again:?} (closed: {closed_again})\n{}",
            c.log_text()
        );
    }
}

/// 2b. Once the cluster has gone on (an event published after the restart), the events
///     after the resume id are still lost: `reset`, not a silent replay of the new event.
#[test]
fn s2b_node_started_on_an_empty_redis_resets_a_resume_after_new_events() {
    let (_redis, id3, last, c) = s2_setup();
    let new = c.producer().publish("t", "new");
    let (got, closed) = resume_answer(&c, id3);
    assert!(
        got.starts_with("event: reset"),
        "a resume from {id3} (events up to {last} lost with Redis) after {new} was published \
         on the new node got {got:?} (closed: {closed}) instead of reset first\n{}",
        c.log_text()
    );
}

/// 3. Failover to a replica whose clock is 30 s behind and that lags: the promoted
///    server's TIME is below ids already delivered, so new ids come from `last + 1` of the
///    replica. No subscriber may miss them silently. B, which delivered the 50 events the
///    replica lacks, reaches the new primary only after A has published there.
#[test]
fn s3_redis_time_going_backwards_at_a_failover_no_silent_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = build_clock_shim(tmp.path());
    let mut p1 = Redis::start(&["--repl-diskless-sync-delay", "0"]);
    let link = Forwarder::start(p1.port);
    let link_port = link.port.to_string();
    let shim_path = shim.display().to_string();
    let p2 = Redis::start_with_env(
        &["--replicaof", "127.0.0.1", &link_port],
        &[("LD_PRELOAD", &shim_path), ("SHIM_OFFSET_US", "-30000000")],
    );
    let behind = now_us() - redis_time_us(&p2);
    assert!(
        (29_000_000..31_000_000).contains(&behind),
        "the shimmed replica's TIME is {behind} µs behind, not 30 s"
    );
    let normal = now_us() - redis_time_us(&p1);
    assert!(normal.abs() < 1_000_000, "P1 is {normal} µs off");
    // One forwarder per node, so that B's way to the new primary can be held back.
    let (fa, fb) = (Forwarder::start(p1.port), Forwarder::start(p1.port));
    let (a, b) = (node(&fa.url(), &[]), node(&fb.url(), &[]));
    let acks = AckLog::new();
    let mut ra = Recorder::on("sub@A", &a, "t");
    let mut rb = Recorder::on("sub@B", &b, "t");
    wait_open(&[&ra, &rb]);
    let mut pa = Publisher::new(&a, &acks);
    let mut pb = Publisher::new(&b, &acks);
    for i in 0..3 {
        pa.must("t", &format!("both{i}"));
    }
    assert!(
        wait_for(Duration::from_secs(15), || p2.stream_len("ssehub") == 3),
        "the replica did not sync: {}",
        p2.cli(&["INFO", "replication"])
    );
    a.signal("STOP");
    link.set_mode(Mode::SwallowReplies);
    let ids: Vec<u64> = (0..50).map(|i| pb.must("t", &format!("b{i}"))).collect();
    assert!(rb.wait_for_id(ids[49], Duration::from_secs(5)));
    p1.kill();
    assert_eq!(p2.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    assert_eq!(p2.stream_len("ssehub"), 3, "the promoted replica lags");
    fa.retarget(p2.port);
    fa.cut();
    // B reaches the new primary only after A has published there: the order a backoff
    // race between the two nodes decides at a real failover (B's links lost P1 first and
    // back off; A, continued after the promotion, connects at once), made certain here.
    fb.retarget(p2.port);
    fb.set_mode(Mode::Refuse);
    a.signal("CONT");
    let after = publish_ok(&mut pa, 20, "a", Duration::from_secs(15));
    assert_eq!(after.len(), 20, "A did not come back: {}", a.log_text());
    fb.set_mode(Mode::Pass);
    finish(
        &mut pa,
        &mut [&mut ra, &mut rb],
        &acks,
        "s3 TIME backwards at failover",
    );
}

/// 4. A node that cannot reach Redis yet holds no history: a subscriber without
///    `Last-Event-ID` opened there must not get the old events as live once it has read
///    Redis, only what is published afterwards.
#[test]
fn s4_a_node_that_has_not_read_redis_does_not_deliver_old_history_as_live() {
    let redis = Redis::start(&[]);
    let a = node(&redis.url(), &[]);
    let acks = AckLog::new();
    let mut pa = Publisher::new(&a, &acks);
    let old: Vec<u64> = (0..30).map(|i| pa.must("t", &format!("old{i}"))).collect();
    let fc = Forwarder::start(redis.port);
    fc.set_mode(Mode::Refuse);
    let c = node_unchecked(&fc.url(), &[]);
    let mut rc = Recorder::on("sub@C", &c, "t");
    std::thread::sleep(Duration::from_millis(300));
    // Alive but not ready: it has not read Redis.
    let (status, body) = readyz(&c);
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: redis"), "{body}");
    fc.set_mode(Mode::Pass);
    assert!(wait_for(Duration::from_secs(15), || redis_up(&c) == Some(true)));
    assert!(wait_for(Duration::from_secs(5), || readyz(&c).0 == 200));
    // The subscriber may be between two connections (a node that holds or closes streams
    // until it has read Redis): publish once its stream is open and stays open.
    assert!(
        wait_for(Duration::from_secs(10), || {
            rc.is_open() && {
                std::thread::sleep(Duration::from_millis(500));
                rc.is_open()
            }
        }),
        "C's subscriber has no open stream: {}",
        summary(&rc.record_of())
    );
    let new = pa.must("t", "new");
    let got_new = rc.wait_for_id(new, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    rc.stop();
    let seen_old: Vec<u64> = rc
        .event_ids()
        .into_iter()
        .filter(|id| old.contains(id))
        .collect();
    assert!(
        seen_old.is_empty() && got_new && rc.event_ids() == [new],
        "old events delivered as live: {} of 30; the new one {}: {}",
        seen_old.len(),
        if got_new {
            "delivered"
        } else {
            "NOT delivered"
        },
        summary(&rc.record_of())
    );
}

/// 5. The primary is demoted and the address leads to the new primary for new connections
///    only: the writer's idle connection stays on the demoted server and gets `READONLY`.
///    Publishes must be accepted again within a few seconds.
#[test]
fn s5_writer_left_on_a_demoted_primary_reconnects() {
    let p1 = Redis::start(&[]);
    let p2 = Redis::start(&["--replicaof", "127.0.0.1", &p1.port.to_string()]);
    wait_synced(&p2);
    let fwd = Forwarder::start(p1.port);
    let a = node(&fwd.url(), &[]);
    let acks = AckLog::new();
    let mut ra = Recorder::on("sub@A", &a, "t");
    wait_open(&[&ra]);
    let mut pa = Publisher::new(&a, &acks);
    let before = pa.must("t", "before");
    assert!(ra.wait_for_id(before, Duration::from_secs(5)));
    let errors_before = metric(&a, "ssehub_redis_errors_total").unwrap_or(0);
    assert_eq!(p2.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    assert_eq!(
        p1.cli(&["REPLICAOF", "127.0.0.1", &p2.port.to_string()]),
        "OK"
    );
    fwd.retarget(p2.port);
    let failover = Instant::now();
    let mut first_ok = None;
    let mut last_answer = String::new();
    let mut i = 0;
    while failover.elapsed() < Duration::from_secs(10) {
        let line = format!("{{\"topic\":\"t\",\"data\":\"p{i}\"}}");
        last_answer = pa.request(&line);
        acks.push("t", &format!("p{i}"), &last_answer);
        i += 1;
        if let Some(id) = parse_ok(&last_answer) {
            first_ok = Some((id, failover.elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let errors_after = metric(&a, "ssehub_redis_errors_total").unwrap_or(0);
    let Some((id, after)) = first_ok else {
        panic!(
            "no publish accepted within 10 s of the failover ({i} tries); last answer {last_answer:?}; \
             ssehub_redis_up {:?}, ssehub_redis_errors_total {errors_before} -> {errors_after}",
            redis_up(&a)
        );
    };
    assert!(
        after < Duration::from_secs(5),
        "first ok publish only after {after:?}"
    );
    assert!(
        ra.wait_for_id(id, Duration::from_secs(5)),
        "{}",
        summary(&ra.record_of())
    );
    assert!(
        errors_after > errors_before,
        "ssehub_redis_errors_total did not grow: {errors_before} -> {errors_after}"
    );
    finish(
        &mut pa,
        &mut [&mut ra],
        &acks,
        "s5 writer on demoted primary",
    );
}

/// 6. The replica is promoted but the old primary is not demoted; both nodes' address now
///    leads to the new one, but only B's connections are cut. A must notice that its
///    connections are on a server the address no longer leads to and move within ~3 s;
///    events A had acknowledged on the old primary are lost and must be announced with
///    `reset`.
#[test]
fn s6_two_primaries_for_a_while_a_node_moves_to_where_the_address_leads() {
    let p1 = Redis::start(&[]);
    let p2 = Redis::start(&["--replicaof", "127.0.0.1", &p1.port.to_string()]);
    wait_synced(&p2);
    let (fa, fb) = (Forwarder::start(p1.port), Forwarder::start(p1.port));
    let (a, b) = (node(&fa.url(), &[]), node(&fb.url(), &[]));
    let acks = AckLog::new();
    let mut ra = Recorder::on("sub@A", &a, "t");
    let mut rb = Recorder::on("sub@B", &b, "t");
    wait_open(&[&ra, &rb]);
    let mut pa = Publisher::new(&a, &acks);
    let before = pa.must("t", "before");
    assert!(
        ra.wait_for_id(before, Duration::from_secs(5))
            && rb.wait_for_id(before, Duration::from_secs(5))
    );
    assert!(wait_for(Duration::from_secs(5), || p2.stream_len("ssehub") == 1));
    assert_eq!(p2.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    fa.retarget(p2.port);
    fb.retarget(p2.port);
    fb.cut();
    let failover = Instant::now();
    let mut published: Vec<(u64, Duration)> = Vec::new();
    while failover.elapsed() < Duration::from_secs(6) {
        if let Some(id) = pa.publish("t", &format!("a{}", published.len())) {
            published.push((id, failover.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let B's reader catch up with the last ones.
    std::thread::sleep(Duration::from_millis(500));
    let reached_b = published.iter().find(|(id, _)| rb.has(*id));
    match reached_b {
        Some((_, at)) => assert!(
            *at < Duration::from_secs(4),
            "the first event from A reached B only when published {at:?} after the failover"
        ),
        None => panic!(
            "none of {} events A acknowledged in 6 s after the failover reached B's subscriber \
             (P1 XLEN {}, P2 XLEN {})\n{}\n{}",
            published.len(),
            p1.stream_len("ssehub"),
            p2.stream_len("ssehub"),
            summary(&ra.record_of()),
            summary(&rb.record_of())
        ),
    }
    finish(&mut pa, &mut [&mut ra, &mut rb], &acks, "s6 two primaries");
}

/// 7a. B starts on a stream that is empty but whose `last` key is set (its position is
///     `last`, not an entry). A reconnect of B's links must not be taken for a gap.
#[test]
fn s7a_no_spurious_gap_when_the_position_is_a_raised_last() {
    let redis = Redis::start(&[]);
    let a = node(&redis.url(), &[]);
    let mut pa = a.producer();
    pa.publish("t", "trimmed");
    redis.cli(&["XTRIM", "ssehub:{ev}", "MAXLEN", "0"]);
    assert_eq!(redis.stream_len("ssehub"), 0);
    let fb = Forwarder::start(redis.port);
    let b = node(&fb.url(), &[]);
    let mut c = b.subscribe("topic=t");
    fb.cut();
    // B's links reconnect (its reader's blocked read is cut).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(wait_for(Duration::from_secs(10), || redis_up(&b) == Some(true)));
    let id = pa.publish("t", "after the cut");
    let got = String::from_utf8_lossy(&c.read_for(Duration::from_secs(3))).into_owned();
    assert!(
        got.contains(&format!("id: {id}\n"))
            && !got.contains("retry:")
            && !b.log_contains("possible gap"),
        "B's stream got {got:?}\n{}",
        b.log_text()
    );
}

/// 7b. A node stopped for 2 s and continued answers every publish right after with ok
///     (no `Interrupted system call`).
#[test]
fn s7b_sigstop_sigcont_then_every_publish_is_ok() {
    let redis = Redis::start(&[]);
    let a = node(&redis.url(), &[]);
    let acks = AckLog::new();
    let mut ra = Recorder::on("sub@A", &a, "t");
    wait_open(&[&ra]);
    let mut pa = Publisher::new(&a, &acks);
    let before = pa.must("t", "before");
    assert!(ra.wait_for_id(before, Duration::from_secs(5)));
    a.signal("STOP");
    std::thread::sleep(Duration::from_secs(2));
    a.signal("CONT");
    let mut bad = Vec::new();
    for i in 0..20 {
        let line = format!("{{\"topic\":\"t\",\"data\":\"c{i}\"}}");
        let answer = pa.request(&line);
        if !matches!(acks.push("t", &format!("c{i}"), &answer), Outcome::Ok(_)) {
            bad.push(format!("#{i}: {answer:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cluster_log: Vec<String> = a
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("redis") || l.contains("cluster"))
        .collect();
    assert!(
        bad.is_empty(),
        "answers after SIGCONT that were not ok: {bad:?}\n{}",
        cluster_log.join("\n")
    );
    finish(&mut pa, &mut [&mut ra], &acks, "s7b sigstop");
}

/// 7c. An idempotency key reused with different data is refused, not answered with the
///     first event's id.
#[test]
fn s7c_a_key_reused_with_different_data_is_refused() {
    let redis = Redis::start(&[]);
    let a = node(&redis.url(), &[]);
    let mut p = a.producer();
    let one = r#"{"topic":"t","data":"one","key":"k1"}"#;
    let x = p.publish_json(one);
    assert_eq!(p.publish_json(one), x, "the same line again: the same id");
    let answer = p.request(r#"{"topic":"t","data":"two","key":"k1"}"#);
    assert_eq!(
        answer, r#"{"ok":false,"error":"\"key\" k1 was used for a different event"}"#,
        "(the first was stored as {x})"
    );
    assert_eq!(redis.stream_len("ssehub"), 1);
}

/// 7d. A resume on a node that has not heard of the resume id (it stopped hearing Redis)
///     gets a `retry:` and a close after `catch_up`: no `reset`, no replay.
#[test]
fn s7d_resume_on_a_node_that_is_behind_retries_instead_of_reset() {
    let redis = Redis::start(&[]);
    let catch_up = [("cluster", "catch_up = \"300ms\"")];
    let a = node(&redis.url(), &catch_up);
    let fb = Forwarder::start(redis.port);
    let b = node(&fb.url(), &catch_up);
    let mut pa = a.producer();
    for i in 0..20 {
        pa.publish("t", &format!("e{i}"));
    }
    assert!(wait_for(Duration::from_secs(5), || {
        metric(&b, "ssehub_events_published_total") == Some(20)
    }));
    fb.set_mode(Mode::SwallowReplies);
    let e = pa.publish("t", "E");
    let (mut c, head) = b.request_stream("topic=t", &format!("Last-Event-ID: {e}\r\n"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let closed = c.read_to_close(Duration::from_secs(5));
    let was_closed = closed.is_some();
    let bytes = closed.unwrap_or_else(|| c.read_for(Duration::from_millis(1)));
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let replayed = text.lines().filter(|l| l.starts_with("id: ")).count();
    assert!(
        was_closed && text.contains("retry:") && !text.contains("event: reset") && replayed == 0,
        "expected a retry line and a close, no reset, no replay; got {} with {replayed} events: {:?}",
        if was_closed {
            "a close"
        } else {
            "no close within 5 s"
        },
        &text[..text.len().min(400)]
    );
}
