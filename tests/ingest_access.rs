//! Who may publish (protocol 4): the ingest socket's file mode and group, and the optional
//! `ingest.allowed_uids` list checked with `SO_PEERCRED`.
mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn my_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[test]
fn a_listed_uid_may_publish() {
    let server = Server::start_with(&[("ingest", &format!("allowed_uids = [{}]", my_uid()))]);
    let mut p = server.producer();
    assert!(p.publish("t", "ok") > 0);
}

#[test]
fn an_unlisted_uid_is_refused_with_an_answer_and_closed() {
    let other = my_uid().wrapping_add(4242);
    let server = Server::start_with(&[("ingest", &format!("allowed_uids = [{other}]"))]);
    let sock = std::os::unix::net::UnixStream::connect(&server.socket).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut lines = BufReader::new(sock).lines();
    let answer = lines.next().expect("an answer").unwrap();
    let reason = parse_error_answer(&answer).expect("an error answer");
    assert!(
        reason.contains(&my_uid().to_string()) && reason.contains("allowed_uids"),
        "{reason}"
    );
    assert!(lines.next().is_none(), "then closed");
    let logged = wait_for(std::time::Duration::from_secs(5), || {
        server.log_contains("ingest connection refused")
    });
    assert!(logged, "the refusal is logged");
}

#[test]
fn the_socket_file_gets_the_configured_mode_and_group() {
    // `daemon` exists on every Debian system; its gid is read back from the file.
    let server = Server::start_with(&[("ingest", "mode = \"0620\"\ngroup = \"daemon\"")]);
    let meta = std::fs::metadata(&server.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o620);
    let group = std::fs::read_to_string("/etc/group").unwrap();
    let daemon_gid: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("daemon:x:"))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
        .expect("daemon group");
    assert_eq!(meta.gid(), daemon_gid);
}
