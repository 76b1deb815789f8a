//! Cluster mode reading from replicas (protocol 7, `cluster.read_from`) against real
//! `redis-server` processes: a primary and a replica of it, and real nodes. A node reads
//! from its replica (the primary serves it no `XREAD`), leaves a replica that stops or loses
//! its primary for the primary without a gap or an outage and comes back to it later, and
//! with `min_replicas` delivers nothing a replica does not hold yet. (Every other cluster
//! case also runs with readers on replicas: `SSEHUB_TEST_READERS=replicas` in `.ci/run`.)
mod common;
use common::redis::{Redis, metric, redis_up, wait_synced};
use common::*;
use std::time::{Duration, Instant};

/// A primary and a replica of it, in sync.
fn primary_and_replica() -> (Redis, Redis) {
    let primary = Redis::start(&[]);
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    wait_synced(&replica);
    (primary, replica)
}

/// A node writing to `primary` and (with `replica`) reading from it, with `extra` lines in
/// `[cluster]`; waits for `ssehub_redis_up 1`.
fn node(primary: &Redis, replica: Option<&Redis>, extra: &str) -> Server {
    let mut cluster = format!(
        "redis = {:?}\nconnect_timeout = \"500ms\"\n{extra}",
        primary.url()
    );
    if let Some(r) = replica {
        cluster.push_str(&format!("\nread_from = [{:?}]", r.url()));
    }
    let s = Server::start_with(&[("cluster", &cluster)]);
    assert!(
        wait_for(Duration::from_secs(10), || redis_up(&s) == Some(true)),
        "node did not come up: {}",
        s.log_text()
    );
    s
}

fn reading_replica(s: &Server) -> Option<u64> {
    metric(s, "ssehub_redis_reading_replica")
}

/// Calls of `command` a Redis served since it started (`INFO commandstats`).
fn calls(redis: &Redis, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Reads until `n` events with ids arrived (failing on a `reset`); their (id, data).
fn read_events(c: &mut Client, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        let block = c.read_event();
        assert!(!block.contains("event: reset"), "a reset: {got:?}");
        if let Some(id) = event_id(&block) {
            got.push((id, event_data(&block)));
        }
    }
    got
}

fn publish_n(p: &mut Producer, from: usize, n: usize) -> Vec<(u64, String)> {
    (from..from + n)
        .map(|i| {
            let data = format!("e{i}");
            (p.publish("t", &data), data)
        })
        .collect()
}

#[test]
fn a_node_reads_from_its_replica_and_the_primary_serves_it_no_read() {
    let (primary, replica) = primary_and_replica();
    let a = node(&primary, Some(&replica), "");
    assert!(wait_for(Duration::from_secs(5), || reading_replica(&a) == Some(1)));
    let mut c = a.subscribe("topic=t");
    let mut p = a.producer();
    let sent = publish_n(&mut p, 0, 50);
    assert_eq!(read_events(&mut c, 50), sent, "every event, in order");
    assert_eq!(calls(&primary, "xread"), 0, "the primary served an XREAD");
    assert!(calls(&replica, "xread") > 0, "the replica served no XREAD");
    assert!(calls(&primary, "fcall") > 0, "writes go to the primary");
    // A resume on the replica-reading node: exactly what was missed, then an id that is
    // not in the stream at all gets `reset` (the tail check asks the primary where the
    // stream ends).
    let mut r = a.resume("topic=t", &sent[39].0.to_string());
    assert_eq!(read_events(&mut r, 10), sent[40..].to_vec());
    let ahead = sent[49].0 + 1_000_000;
    let started = Instant::now();
    let mut r = a.resume("topic=t", &ahead.to_string());
    let block = r.read_event();
    assert!(block.contains("event: reset"), "{block:?}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "decided by the tail check, not by cluster.catch_up: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_replica_that_stops_or_loses_its_primary_is_left_without_gap_or_outage() {
    let (primary, replica) = primary_and_replica();
    let a = node(&primary, Some(&replica), "");
    let b = node(&primary, None, "");
    assert!(wait_for(Duration::from_secs(5), || reading_replica(&a) == Some(1)));
    let mut on_a = a.subscribe("topic=t");
    let mut on_b = b.subscribe("topic=t");
    let mut p = b.producer();
    let mut sent = publish_n(&mut p, 0, 10);
    assert_eq!(read_events(&mut on_a, 10), sent);

    // The replica stops answering: node A reads from the primary within about a second and
    // misses nothing; Redis is not reported down.
    let pid = replica.pid().to_string();
    let signal = |name: &str| {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} {pid}");
    };
    signal("STOP");
    let stopped = Instant::now();
    let more = publish_n(&mut p, 10, 10);
    assert_eq!(
        read_events(&mut on_a, 10),
        more,
        "while the replica is stopped"
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "left the stopped replica only after {:?}",
        stopped.elapsed()
    );
    assert_eq!(reading_replica(&a), Some(0));
    assert_eq!(
        redis_up(&a),
        Some(true),
        "a replica's failure is not an outage"
    );
    sent.extend(more);
    signal("CONT");

    // After a while it goes back to the replica, and then the replica loses its primary:
    // it moves to the primary again, still without a gap.
    assert!(
        wait_for(Duration::from_secs(20), || reading_replica(&a) == Some(1)),
        "never went back to the replica: {}",
        a.log_text()
    );
    let more = publish_n(&mut p, 20, 5);
    assert_eq!(read_events(&mut on_a, 5), more);
    sent.extend(more);
    let dead = common::redis::free_port().to_string();
    assert_eq!(replica.cli(&["REPLICAOF", "127.0.0.1", &dead]), "OK");
    assert!(wait_for(Duration::from_secs(5), || reading_replica(&a) == Some(0)));
    let more = publish_n(&mut p, 25, 5);
    assert_eq!(read_events(&mut on_a, 5), more);
    sent.extend(more);
    assert_eq!(
        read_events(&mut on_b, sent.len()),
        sent,
        "node B saw the same"
    );
    assert_eq!(redis_up(&a), Some(true));
    assert!(
        !a.log_contains("gap up to"),
        "a replica's trouble is not a gap: {}",
        a.log_text()
    );
}

#[test]
fn with_min_replicas_nothing_is_delivered_before_a_replica_holds_it() {
    let (primary, replica) = primary_and_replica();
    let cluster = "min_replicas = 1\nreplica_timeout = \"200ms\"";
    // A reads from the primary and must confirm by WAIT; B reads from the replica, which
    // holds what it reads.
    let a = node(&primary, None, cluster);
    let b = node(&primary, Some(&replica), cluster);
    assert!(wait_for(Duration::from_secs(5), || reading_replica(&b) == Some(1)));
    let mut on_a = a.subscribe("topic=t");
    let mut on_b = b.subscribe("topic=t");
    let mut p = a.producer();
    let first = publish_n(&mut p, 0, 3);
    assert_eq!(read_events(&mut on_a, 3), first);
    assert_eq!(read_events(&mut on_b, 3), first);

    // The replica stops: the publish is stored but not confirmed, and no node delivers it.
    let pid = replica.pid().to_string();
    let kill = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
    };
    kill("-STOP");
    let answer = p.request(r#"{"topic":"t","data":"held"}"#);
    assert!(
        answer.starts_with("{\"ok\":false,\"error\":\"not confirmed: only 0 of 1 replicas"),
        "{answer}"
    );
    for (name, c) in [("A", &mut on_a), ("B", &mut on_b)] {
        let early = c.read_for(Duration::from_millis(1500));
        assert!(
            !String::from_utf8_lossy(&early).contains("held"),
            "node {name} delivered an event no replica holds: {early:?}"
        );
    }
    // Once the replica holds it, both deliver it, without a reset.
    kill("-CONT");
    for c in [&mut on_a, &mut on_b] {
        c.set_timeout(Duration::from_secs(15));
        let got = read_events(c, 1);
        assert_eq!(got[0].1, "held");
        assert!(got[0].0 > first[2].0);
    }
    assert!(a.log_contains("holding it back"), "{}", a.log_text());
}
