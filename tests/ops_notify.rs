//! systemd notifications (protocol 5): started with `NOTIFY_SOCKET` pointing at a datagram
//! socket the test owns, the hub sends `READY=1` once listening, `STATUS=` lines with its
//! counts, `WATCHDOG=1` at half of `WATCHDOG_USEC` from its own loop, and `STOPPING=1`
//! when a stop signal starts the drain. Path and abstract (`@`) sockets both work.
mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Every datagram received within `wait`, with its arrival time.
fn receive_for(rx: &UnixDatagram, wait: Duration) -> Vec<(Instant, String)> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        rx.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        if let Ok(n) = rx.recv(&mut buf) {
            got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    got
}

fn fields(messages: &[(Instant, String)]) -> Vec<String> {
    messages
        .iter()
        .flat_map(|(_, m)| m.lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

fn notify_sequence(rx: &UnixDatagram, notify_socket: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "[streams]\ndrain_timeout = \"2s\"\n");
    let notify = notify_socket.to_string();
    let mut hub = Server::start_config(&config, |cmd| {
        cmd.env("NOTIFY_SOCKET", &notify)
            .env("WATCHDOG_USEC", "200000");
    });
    // READY comes once listening (the `listening` line has been seen), with a status.
    let first = receive_for(rx, Duration::from_millis(300));
    let first_fields = fields(&first);
    assert_eq!(
        first_fields.first().map(String::as_str),
        Some("READY=1"),
        "first message must be READY=1: {first:?}"
    );
    assert!(
        first_fields
            .iter()
            .any(|f| f.starts_with("STATUS=0 streams")),
        "READY carries a status: {first_fields:?}"
    );

    // Traffic changes the status within its refresh period (2 s).
    let mut sub = {
        let mut c = Client::connect(hub.addr);
        c.send("GET /events?topic=n HTTP/1.1\r\nHost: t\r\n\r\n");
        c.read_head();
        c.read_line();
        c
    };
    let mut producer = Producer::connect(&dir.path().join("ingest.sock"));
    let id = producer.publish("n", "x");
    assert_eq!(sub.read_event(), format!("id: {id}\ndata: x\n\n"));
    let later = receive_for(rx, Duration::from_millis(2600));
    let later_fields = fields(&later);
    assert!(
        later_fields
            .iter()
            .any(|f| f.starts_with("STATUS=1 streams") && f.contains("1 events published")),
        "no STATUS with the new counts: {later_fields:?}"
    );

    // The watchdog: every 100 ms (half of 200 ms), so about 26 in 2.6 s; never a gap near
    // the full 200 ms.
    let pings: Vec<Instant> = later
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        (15..=40).contains(&pings.len()),
        "expected ~26 WATCHDOG=1 in 2.6 s, got {}",
        pings.len()
    );
    let worst = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        worst < Duration::from_millis(190),
        "a watchdog gap of {worst:?} would let systemd kill a healthy hub"
    );

    // The stop: STOPPING=1 before the drain ends, then the process exits 0.
    hub.signal("TERM");
    let end = receive_for(rx, Duration::from_millis(500));
    let end_fields = fields(&end);
    assert!(
        end_fields.iter().any(|f| f == "STOPPING=1"),
        "no STOPPING=1: {end_fields:?}"
    );
    assert!(
        end_fields
            .iter()
            .any(|f| f.starts_with("STATUS=stopping: draining 1 streams")),
        "{end_fields:?}"
    );
    let rest = sub.read_to_close(Duration::from_secs(5)).expect("closed");
    assert!(String::from_utf8_lossy(&rest).starts_with("retry: "));
    assert_eq!(hub.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(
        !hub.log_contains("NOTIFY_SOCKET unusable"),
        "{}",
        hub.log_text()
    );
}

#[test]
fn ready_status_watchdog_stopping_on_a_path_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    notify_sequence(&rx, path.to_str().unwrap());
}

#[test]
fn abstract_namespace_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("ssehub-ops-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let rx = UnixDatagram::bind_addr(&addr).unwrap();
    notify_sequence(&rx, &format!("@{name}"));
}

#[test]
fn no_watchdog_when_it_is_meant_for_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    let config = write_config(dir.path(), "", "");
    let mut hub = Server::start_config(&config, |cmd| {
        cmd.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "100000")
            .env("WATCHDOG_PID", "1");
    });
    let got = fields(&receive_for(&rx, Duration::from_millis(500)));
    assert_eq!(got.first().map(String::as_str), Some("READY=1"));
    assert!(!got.iter().any(|f| f == "WATCHDOG=1"), "{got:?}");
    hub.signal("TERM");
    assert_eq!(hub.wait_exit(Duration::from_secs(8)), Some(0));
}

#[test]
fn without_notify_socket_nothing_is_sent_and_nothing_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let mut hub = Server::start_config(&config, |cmd| {
        cmd.env_remove("NOTIFY_SOCKET")
            .env("WATCHDOG_USEC", "100000");
    });
    let mut c = Client::connect(hub.addr);
    c.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().0, 200);
    hub.signal("TERM");
    assert_eq!(hub.wait_exit(Duration::from_secs(8)), Some(0));
}
