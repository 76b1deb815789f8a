//! `GET /metrics` (protocol 5): Prometheus text format, read by the official Python client's
//! parser, with values checked against traffic the test made itself; `http.admin_listen`
//! moves `/metrics` and `/healthz` to their own listener.
mod common;

use common::prom::{parse_prometheus, value};
use common::*;
use std::time::Duration;

fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    let mut c = Client::connect(addr);
    c.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, head, body) = c.read_response();
    assert_eq!(status, 200, "{head}{body}");
    (head, body)
}

#[test]
fn metrics_match_known_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let hub = Server::start_config(&config, |_| {});
    let mut written = 0usize; // every byte the hub sent us, counted as we read it

    let mut streams: Vec<Client> = Vec::new();
    for topic in ["news", "news", "news", "other"] {
        let mut c = Client::connect(hub.addr);
        c.send(&format!(
            "GET /events?topic={topic} HTTP/1.1\r\nHost: t\r\n\r\n"
        ));
        written += c.read_head().len();
        written += c.read_line().len();
        streams.push(c);
    }
    let mut p = Producer::connect(&dir.path().join("ingest.sock"));
    let mut frame_bytes = 0;
    for i in 0..5 {
        let data = format!("event number {i}");
        let id = p.publish("news", &data);
        for (n, c) in streams[..3].iter_mut().enumerate() {
            let e = c.read_event();
            if n == 0 {
                // Counted as the allocator rounds the frame's block.
                frame_bytes += ssehub::history::frame_bytes(e.len());
            }
            assert_eq!(e, format!("id: {id}\ndata: {data}\n\n"));
            written += e.len();
        }
    }
    // Two refused ingest lines, a 404 and a 400 (bad topic).
    assert!(parse_error_answer(&p.request("{\"topic\":\"x\"}")).is_some());
    assert!(parse_error_answer(&p.request("not json")).is_some());
    let mut kept = Vec::new();
    for (request, status) in [
        ("GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n", 404),
        (
            "GET /events?topic=bad%20name HTTP/1.1\r\nHost: t\r\n\r\n",
            400,
        ),
    ] {
        let mut c = Client::connect(hub.addr);
        c.send(request);
        let (got, head, body) = c.read_response();
        assert_eq!(got, status);
        written += head.len() + body.len();
        kept.push(c);
    }

    let (head, body) = scrape(hub.addr);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{head}"
    );
    let m = parse_prometheus(&body);
    for f in &m {
        assert!(!f.help.is_empty(), "{} has no HELP", f.name);
        assert!(f.kind != "unknown", "{} has no TYPE", f.name);
    }
    let v = |name: &str, labels: &[(&str, &str)]| value(&m, name, labels);
    assert_eq!(v("ssehub_events_published_total", &[]), 5.0);
    assert_eq!(v("ssehub_events_delivered_total", &[]), 15.0);
    assert_eq!(v("ssehub_events_replayed_total", &[]), 0.0);
    assert_eq!(v("ssehub_streams", &[]), 4.0);
    assert_eq!(v("ssehub_streams_opened_total", &[]), 4.0);
    assert_eq!(v("ssehub_connections", &[("state", "streaming")]), 4.0);
    // The 404's connection is kept alive for another request (HTTP/1.1), the 400's is
    // closing (lingering until we close), and the scrape's own is reading.
    assert_eq!(v("ssehub_connections", &[("state", "reading")]), 2.0);
    assert_eq!(v("ssehub_connections", &[("state", "lingering")]), 1.0);
    assert_eq!(v("ssehub_producers", &[]), 1.0);
    assert_eq!(v("ssehub_topics", &[]), 2.0);
    assert_eq!(v("ssehub_connections_accepted_total", &[]), 7.0);
    assert_eq!(v("ssehub_ingest_errors_total", &[]), 2.0);
    assert_eq!(
        v("ssehub_rejected_requests_total", &[("status", "404")]),
        1.0
    );
    assert_eq!(
        v("ssehub_rejected_requests_total", &[("status", "400")]),
        1.0
    );
    assert_eq!(
        v("ssehub_rejected_requests_total", &[("status", "503")]),
        0.0
    );
    for reason in ["pending", "write_timeout", "peer_timeout"] {
        assert_eq!(
            v("ssehub_slow_disconnects_total", &[("reason", reason)]),
            0.0
        );
    }
    assert_eq!(v("ssehub_history_events", &[]), 5.0);
    // Retained bytes are what `history.max_bytes` caps: the events' encoded frames plus
    // their bookkeeping. The topics' metadata ("news" and "other") is not in it while
    // streams hold them: it is counted apart.
    use ssehub::history::{EVENT_OVERHEAD, EVENT_PER_TOPIC};
    use ssehub::pubsub::TOPIC_OVERHEAD;
    let counted = frame_bytes + 5 * (EVENT_OVERHEAD + EVENT_PER_TOPIC);
    assert_eq!(v("ssehub_history_bytes", &[]), counted as f64);
    let names = 2 * TOPIC_OVERHEAD + "news".len() + "other".len();
    assert_eq!(v("ssehub_subscribed_topic_bytes", &[]), names as f64);
    assert_eq!(v("ssehub_bytes_written_total", &[]), written as f64);

    // Publish-to-write latency: each event went out to 3 streams in a write of its own.
    let latency = m
        .iter()
        .find(|f| f.name == "ssehub_publish_to_write_latency_seconds")
        .expect("latency family");
    assert_eq!(latency.kind, "summary");
    assert_eq!(
        v("ssehub_publish_to_write_latency_seconds_count", &[]),
        15.0
    );
    let sum = v("ssehub_publish_to_write_latency_seconds_sum", &[]);
    assert!(sum > 0.0 && sum < 1.0, "sum {sum}");
    let mut last = 0.0;
    for q in ["0.5", "0.9", "0.99", "0.999", "1"] {
        let x = v(
            "ssehub_publish_to_write_latency_seconds",
            &[("quantile", q)],
        );
        assert!(x > 0.0 && x < 1.0 && x >= last, "quantile {q}: {x}");
        last = x;
    }
    let start = v("ssehub_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(start > now - 60.0 && start <= now, "start {start}");
}

#[test]
fn an_idle_hub_exposes_every_series_with_nan_quantiles() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Server::start_config(&write_config(dir.path(), "", ""), |_| {});
    let (_, body) = scrape(hub.addr);
    let m = parse_prometheus(&body);
    let q = value(
        &m,
        "ssehub_publish_to_write_latency_seconds",
        &[("quantile", "0.99")],
    );
    assert!(q.is_nan(), "no samples yet: NaN, got {q}");
    assert_eq!(
        value(&m, "ssehub_publish_to_write_latency_seconds_count", &[]),
        0.0
    );
    // HEAD gets the head only.
    let mut c = Client::connect(hub.addr);
    c.send("HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(c.read_for(Duration::from_millis(200)).is_empty());
    assert_eq!(value(&m, "ssehub_heap_trims_total", &[]), 0.0);
}

/// Every 10 s the loop does its heap housekeeping (spare capacity, glibc's own heap:
/// `src/heap.rs`) and counts the time it took.
#[test]
fn heap_housekeeping_runs_every_ten_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Server::start_config(&write_config(dir.path(), "", ""), |_| {});
    std::thread::sleep(Duration::from_millis(10_600));
    let (_, body) = scrape(hub.addr);
    let m = parse_prometheus(&body);
    assert_eq!(value(&m, "ssehub_heap_trims_total", &[]), 1.0);
    let spent = value(&m, "ssehub_heap_trim_seconds_total", &[]);
    assert!(
        spent > 0.0 && spent < 0.05,
        "one trim of an idle hub took {spent} s"
    );
}

#[test]
fn admin_listen_takes_metrics_and_healthz_away_from_the_public_listener() {
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap();
    drop(admin);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("admin_listen = \"{admin_addr}\""), "");
    let hub = Server::start_config(&config, |_| {});
    let status = |addr, path: &str| {
        let mut c = Client::connect(addr);
        c.send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        c.read_response().0
    };
    assert_eq!(status(hub.addr, "/metrics"), 404);
    assert_eq!(status(hub.addr, "/healthz"), 404);
    assert_eq!(status(admin_addr, "/healthz"), 200);
    assert_eq!(status(admin_addr, "/events?topic=a"), 404);
    let (_, body) = scrape(admin_addr);
    let m = parse_prometheus(&body);
    // The public 404s above are counted; the admin 404 too.
    assert_eq!(
        value(&m, "ssehub_rejected_requests_total", &[("status", "404")]),
        3.0
    );
    assert!(wait_for(Duration::from_secs(2), || hub
        .log_contains(&format!("admin={admin_addr}"))));
    // Streams still work on the public listener.
    let mut c = Client::connect(hub.addr);
    c.send("GET /events?topic=a HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(c.read_head().starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn metrics_on_the_public_listener_answer_loopback_clients_only() {
    // Without admin_listen, /metrics would tell anyone about topics, traffic and capacity:
    // it answers clients on this host only. Behind a trusted proxy the forwarded client is
    // what counts (a proxy on this host must not open it to the world).
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "trusted_proxies = [\"127.0.0.1\"]", "");
    let hub = Server::start_config(&config, |_| {});
    let get = |headers: &str| {
        let mut c = Client::connect(hub.addr);
        c.send(&format!(
            "GET /metrics HTTP/1.1\r\nHost: t\r\n{headers}\r\n"
        ));
        let (status, _, body) = c.read_response();
        (status, body)
    };
    assert_eq!(get("").0, 200, "a loopback peer");
    assert_eq!(get("X-Forwarded-For: 127.0.0.1\r\n").0, 200);
    let (status, body) = get("X-Forwarded-For: 203.0.113.5\r\n");
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "metrics are served to loopback clients only (set http.admin_listen)\n"
    );
    assert_eq!(get("X-Forwarded-For: 10.0.0.1, ::1\r\n").0, 200);
    assert_eq!(get("X-Forwarded-For: 2001:db8::1\r\n").0, 403);
    // /healthz stays public.
    let mut c = Client::connect(hub.addr);
    c.send("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.5\r\n\r\n");
    assert_eq!(c.read_response().0, 200);
}
