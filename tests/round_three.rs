//! Issue 28 (single node, round three), over real sockets against the real binary:
//! - an event committed by a producer whose answers could not be written reaches no stream
//!   of another topic (the producer's batch is fanned out before anything else happens,
//!   and events name their topics with the slot's generation);
//! - names that anonymous streams ask for never evict a published topic's history;
//! - a reload pipelined before a publish on the same connection applies first.
//!
//! The first reproduction lands the producer's input and the new stream in one turn of
//! the loop: the server is stopped (`SIGSTOP`) while both arrive and continued after.

mod common;

use common::*;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// One trial of the leak: with the server stopped, a producer writes one line on
/// `secret_topic` and then enough small lines on another topic to evict it (and to fill
/// its answer buffer) and closes without reading its answers; a stream asks for a fresh
/// topic with `Last-Event-ID: 1`. Returns what that stream received.
fn leak_trial(hub: &Server, secret_topic: &str, public_topic: &str) -> Vec<u8> {
    hub.signal("STOP");
    let mut input =
        format!("{{\"topic\":\"{secret_topic}\",\"data\":\"SECRET-{secret_topic}\"}}\n");
    for i in 0..2_500 {
        input.push_str(&format!("{{\"topic\":\"filler\",\"data\":\"{i}\"}}\n"));
    }
    let socket = hub.socket.clone();
    // The kernel takes ~100 KB on a Unix socket without a reader; written from a thread in
    // case it does not, so the server can be continued meanwhile.
    let writer = std::thread::spawn(move || {
        let mut producer = UnixStream::connect(&socket).expect("connect ingest");
        producer.write_all(input.as_bytes()).expect("write lines");
        // Closed without reading a single answer: writing them fails.
    });
    for _ in 0..100 {
        if writer.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut stream = Client::connect(hub.addr);
    stream.send(&format!(
        "GET /events?topic={public_topic} HTTP/1.1\r\nHost: t\r\nLast-Event-ID: 1\r\n\r\n"
    ));
    std::thread::sleep(Duration::from_millis(100));
    hub.signal("CONT");
    writer.join().expect("producer thread");
    stream.read_for(Duration::from_millis(400))
}

fn assert_no_leak(received: &[u8], secret_topic: &str) {
    let text = String::from_utf8_lossy(received);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("event: reset\n"),
        "events before the stream are gone: {text}"
    );
    assert!(
        !text.contains(&format!("SECRET-{secret_topic}")),
        "an event of {secret_topic} reached another topic's stream: {text}"
    );
}

/// Issue 28, item 1: the event on `secretA` must never reach the stream on `publicB`.
#[test]
fn an_event_of_a_failed_producer_read_never_reaches_another_topics_stream() {
    let hub = Server::start_with(&[("history", "max_bytes = 3000")]);
    for trial in 0..4 {
        let (secret, public) = (format!("secretA{trial}"), format!("publicB{trial}"));
        let received = leak_trial(&hub, &secret, &public);
        assert_no_leak(&received, &secret);
    }
    // The producer's events were committed and the hub goes on.
    let mut p = hub.producer();
    let mut s = hub.subscribe("topic=after");
    let id = p.publish("after", "fine");
    assert_eq!(s.read_event(), format!("id: {id}\ndata: fine\n\n"));
}

/// The same with the secret topic private: an anonymous stream on a public topic must not
/// receive a private event.
#[test]
fn a_private_event_never_reaches_an_anonymous_stream_through_a_reused_slot() {
    let hub = Server::start_with(&[
        ("history", "max_bytes = 3000"),
        ("auth", "secret = \"k\"\nprivate = [\"secretA*\"]"),
    ]);
    for trial in 0..4 {
        let (secret, public) = (format!("secretA{trial}"), format!("publicB{trial}"));
        let received = leak_trial(&hub, &secret, &public);
        assert_no_leak(&received, &secret);
    }
}

/// `ssehub_<name>` from `/metrics`.
fn metric(hub: &Server, name: &str) -> f64 {
    let mut c = Client::connect(hub.addr);
    c.send("GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let body = String::from_utf8_lossy(&c.read_to_close(Duration::from_secs(5)).expect("body"))
        .into_owned();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing"))
}

/// Issue 28, item 2: anonymous streams asking for many fresh names (32 per connection, 200
/// bytes each) must not evict a published topic's history; `history.max_bytes` holds, and
/// the names are accounted apart, within streams × `streams.max_topics`.
#[test]
fn names_streams_ask_for_never_wipe_history() {
    let max_bytes = 1 << 20;
    let hub = Server::start_with(&[("history", &format!("max_bytes = {max_bytes}"))]);
    let mut p = hub.producer();
    let data = "x".repeat(1000);
    let mut lines = String::new();
    for _ in 0..500 {
        lines.push_str(&format!("{{\"topic\":\"a\",\"data\":\"{data}\"}}\n"));
    }
    p.send_raw(lines.as_bytes());
    let ids: Vec<u64> = (0..500)
        .map(|_| parse_ok(&p.read_answer()).expect("published"))
        .collect();
    assert_eq!(metric(&hub, "ssehub_history_events"), 500.0);

    let (connections, names) = (200, 32);
    let rss_before = vm_rss_kib(hub.pid()).expect("VmRSS");
    let mut streams = Vec::new();
    for c in 0..connections {
        let query: Vec<String> = (0..names)
            .map(|i| format!("topic=n{c:0>4}-{i:0>3}-{}", "p".repeat(190)))
            .collect();
        streams.push(hub.subscribe(&query.join("&")));
    }
    // Memory within the documented bound (docs/protocol.md 2.2: a name and ~320 bytes of
    // metadata per fresh name; measured ~460 B per 200-byte name), with room for noise.
    let grown = (vm_rss_kib(hub.pid()).expect("VmRSS") - rss_before) * 1024;
    let bound = connections * names * (ssehub::pubsub::TOPIC_OVERHEAD + 200);
    assert!(
        grown < (bound * 3 / 2 + (1 << 20)) as u64,
        "{grown} bytes for {bound} bytes of names"
    );
    let last = p.publish("a", "one more");
    let history_bytes = metric(&hub, "ssehub_history_bytes");
    assert!(history_bytes <= max_bytes as f64, "{history_bytes}");
    assert_eq!(metric(&hub, "ssehub_history_events"), 501.0);

    // A client that saw only the first event resumes and gets the other 499 and the last,
    // without `reset`.
    let mut resumed = hub.resume("topic=a", &ids[0].to_string());
    for &id in ids[1..].iter().chain(std::iter::once(&last)) {
        let block = resumed.read_event();
        assert_eq!(event_id(&block), Some(id), "{block}");
    }
    // The names are accounted apart: every name is fresh, 200 bytes.
    let name_len = 200;
    let per_name = ssehub::pubsub::TOPIC_OVERHEAD + name_len;
    let a = ssehub::pubsub::TOPIC_OVERHEAD + 1;
    assert_eq!(
        metric(&hub, "ssehub_subscribed_topic_bytes"),
        (connections * names * per_name + a) as f64
    );
    // The streams leave: their names are forgotten (only `a`, held by the resumed
    // stream, is left).
    drop(streams);
    let only_a = (ssehub::pubsub::TOPIC_OVERHEAD + 1) as f64;
    assert!(wait_for(Duration::from_secs(5), || {
        metric(&hub, "ssehub_subscribed_topic_bytes") == only_a
    }));
    assert_eq!(metric(&hub, "ssehub_topics"), 1.0);
}

/// Issue 28, item 3: a publish pipelined after `{"admin":"reload"}` on the same
/// connection is handled under the reloaded configuration. The reload makes the stream's
/// topic private: the stream is ended with a `retry:` and never gets the event.
#[test]
fn a_publish_pipelined_after_a_reload_sees_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ingest.sock");
    let retry = "[streams]\nretry_base = \"2s\"\nretry_jitter = \"1s\"\n";
    let auth = |private: &str| format!("{retry}[auth]\nsecret = \"k\"\nprivate = [{private}]\n");
    let config = write_config(dir.path(), "", &auth(""));
    let hub = Server::start_config(&config, |_| {});
    for round in 0..3 {
        let topic = format!("later{round}");
        let mut stream = hub.subscribe(&format!("topic={topic}"));
        let mut p = Producer::connect(&socket);
        let before = p.publish(&topic, "BEFORE");
        assert_eq!(
            stream.read_event(),
            format!("id: {before}\ndata: BEFORE\n\n")
        );
        write_config(dir.path(), "", &auth(&format!("\"{topic}\"")));
        p.send_raw(
            format!(
                "{{\"admin\":\"reload\"}}\n{{\"topic\":\"{topic}\",\"data\":\"AFTER-reload\"}}\n"
            )
            .as_bytes(),
        );
        let reloaded = p.read_answer();
        assert!(
            reloaded.starts_with("{\"ok\":true,\"changed\":[\"auth.private\"]"),
            "{reloaded}"
        );
        assert!(
            parse_ok(&p.read_answer()).is_some(),
            "the publish is accepted"
        );
        let rest = stream
            .read_to_close(Duration::from_secs(5))
            .expect("the stream is ended");
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("AFTER-reload"), "{rest}");
        assert!(rest.starts_with("retry: "), "{rest}");
        write_config(dir.path(), "", &auth(""));
        assert!(
            p.request("{\"admin\":\"reload\"}")
                .starts_with("{\"ok\":true")
        );
    }
}
