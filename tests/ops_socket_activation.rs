//! Socket activation (protocol 5): listening sockets passed the way systemd passes them —
//! descriptors 3 and 4, `LISTEN_FDS`, `LISTEN_PID` naming the hub's own pid, optional
//! `LISTEN_FDNAMES` — are used instead of binding; told apart by socket family; a passed
//! ingest socket's file stays at exit; and because the sockets outlive the process (here
//! the test holds them, as the socket unit does), a restart refuses no one.
mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Starts the hub with `fds` as descriptors 3, 4, ... through `sh`, which sets `LISTEN_PID`
/// to its own pid and then execs the hub (same pid), as systemd does for its child.
fn start_activated(
    config: &Path,
    fds: &[RawFd],
    names: Option<&str>,
    listen_pid: Option<&str>,
) -> Server {
    let fds = fds.to_vec();
    let mut cmd = Command::new("sh");
    let pid = listen_pid.unwrap_or("$$");
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID={pid} LISTEN_FDS={} exec \"$0\" \"$@\"",
            fds.len()
        ))
        .arg(BIN)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--log-level")
        .arg("debug");
    if let Some(names) = names {
        cmd.env("LISTEN_FDNAMES", names);
    }
    // SAFETY: only async-signal-safe calls (fcntl, dup2, close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // First out of the way (so fd 3 or 4 of the parent is not overwritten before it
            // is copied), then into place; dup2 leaves the copies without CLOEXEC.
            let mut high = Vec::with_capacity(fds.len());
            for &fd in &fds {
                let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, &h) in high.iter().enumerate() {
                if libc::dup2(h, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Server::spawn(cmd, config)
}

fn subscribe(addr: std::net::SocketAddr, topic: &str) -> Client {
    let mut c = Client::connect(addr);
    c.send(&format!(
        "GET /events?topic={topic} HTTP/1.1\r\nHost: t\r\n\r\n"
    ));
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(c.read_line().starts_with("retry: "));
    c
}

struct Sockets {
    dir: tempfile::TempDir,
    tcp: TcpListener,
    unix: UnixListener,
    /// The configured (not passed) HTTP address: a port nobody listens on.
    config: std::path::PathBuf,
}

fn sockets() -> Sockets {
    let dir = tempfile::tempdir().unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let unix = UnixListener::bind(dir.path().join("ingest.sock")).unwrap();
    let config = write_config(dir.path(), "", "[streams]\ndrain_timeout = \"2s\"\n");
    Sockets {
        dir,
        tcp,
        unix,
        config,
    }
}

#[test]
fn passed_sockets_are_served_and_the_ingest_file_stays() {
    let s = sockets();
    // Unix first, TCP second, and no names: the family decides.
    let mut hub = start_activated(
        &s.config,
        &[s.unix.as_raw_fd(), s.tcp.as_raw_fd()],
        None,
        None,
    );
    assert_eq!(
        hub.addr,
        s.tcp.local_addr().unwrap(),
        "the hub listens on the passed TCP socket"
    );
    assert!(wait_for(Duration::from_secs(2), || hub
        .log_contains("socket_activated=true")));
    assert!(wait_for(Duration::from_secs(2), || hub.log_contains("(passed in)")));
    let mut sub = subscribe(hub.addr, "activated");
    let mut p = Producer::connect(&s.dir.path().join("ingest.sock"));
    let id = p.publish("activated", "through passed sockets");
    assert_eq!(
        sub.read_event(),
        format!("id: {id}\ndata: through passed sockets\n\n")
    );
    hub.signal("TERM");
    assert!(sub.read_to_close(Duration::from_secs(5)).is_some());
    drop(p);
    assert_eq!(hub.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(
        s.dir.path().join("ingest.sock").exists(),
        "the socket unit's file was removed"
    );
}

#[test]
fn names_are_honoured_and_a_kind_not_passed_is_bound_from_config() {
    let s = sockets();
    // Only the HTTP socket, named: the ingest socket is bound from the config as usual
    // (the test's own listener file is removed so the path is free).
    drop(s.unix);
    std::fs::remove_file(s.dir.path().join("ingest.sock")).unwrap();
    let mut hub = start_activated(&s.config, &[s.tcp.as_raw_fd()], Some("http"), None);
    assert_eq!(hub.addr, s.tcp.local_addr().unwrap());
    let mut sub = subscribe(hub.addr, "named");
    let mut p = Producer::connect(&s.dir.path().join("ingest.sock"));
    let id = p.publish("named", "x");
    assert_eq!(sub.read_event(), format!("id: {id}\ndata: x\n\n"));
    hub.signal("TERM");
    drop(p);
    assert!(sub.read_to_close(Duration::from_secs(5)).is_some());
    assert_eq!(hub.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(
        !s.dir.path().join("ingest.sock").exists(),
        "a socket the hub bound itself is removed at exit"
    );
}

#[test]
fn descriptors_for_another_pid_are_not_taken() {
    let s = sockets();
    drop(s.unix);
    std::fs::remove_file(s.dir.path().join("ingest.sock")).unwrap();
    let hub = start_activated(&s.config, &[s.tcp.as_raw_fd()], None, Some("1"));
    assert_ne!(
        hub.addr,
        s.tcp.local_addr().unwrap(),
        "LISTEN_PID was not ours: the hub must bind its configured address"
    );
    assert!(wait_for(Duration::from_secs(2), || hub
        .log_contains("socket_activated=false")));
}

#[test]
fn a_restart_refuses_no_subscriber_and_no_producer() {
    let s = sockets();
    let fds = [s.tcp.as_raw_fd(), s.unix.as_raw_fd()];
    let names = Some("http:ingest");
    let mut first = start_activated(&s.config, &fds, names, None);
    let addr = first.addr;
    let mut old = subscribe(addr, "r");
    first.signal("TERM");
    assert!(old.read_to_close(Duration::from_secs(5)).is_some());
    assert_eq!(first.wait_exit(Duration::from_secs(5)), Some(0));

    // Between the two processes: the sockets are still open (held here, as by the socket
    // unit), so a subscriber and a producer connect and simply wait in the backlog.
    let mut waiting = Client::connect(addr);
    waiting.send("GET /events?topic=r HTTP/1.1\r\nHost: t\r\n\r\n");
    let producer = std::os::unix::net::UnixStream::connect(s.dir.path().join("ingest.sock"))
        .expect("a producer is refused while the hub restarts");

    let second = start_activated(&s.config, &fds, names, None);
    assert_eq!(second.addr, addr);
    let head = waiting.read_head();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(waiting.read_line().starts_with("retry: "));
    producer
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    (&producer)
        .write_all(b"{\"topic\":\"r\",\"data\":\"after restart\"}\n")
        .unwrap();
    let mut answer = String::new();
    BufReader::new(&producer).read_line(&mut answer).unwrap();
    let id = parse_ok(answer.trim_end()).unwrap_or_else(|| panic!("{answer:?}"));
    assert_eq!(
        waiting.read_event(),
        format!("id: {id}\ndata: after restart\n\n")
    );
}
