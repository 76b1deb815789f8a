//! Opening one blocking Redis connection (connect timeout, read and write timeouts, any
//! URL the `redis` crate takes: `redis://`, `rediss://`, `redis+unix://`, `unix://`), the
//! reconnect backoff, and turning the crate's errors into one-line reasons.

use crate::rng::Rng;
use redis::{Client, Cmd, Connection, ConnectionLike, RedisError, Value};
use std::time::Duration;

/// First and last delay between connect attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The client for `url`; `Err` says why the URL is refused.
pub(super) fn client(url: &str) -> Result<Client, String> {
    Client::open(url).map_err(|e| format!("cluster.redis {url:?}: {}", reason(&e)))
}

/// Connects and sets both socket timeouts to `io_timeout`. A connect interrupted by a stop
/// and continue of the process (`EINTR`, which timed socket calls return even with
/// `SA_RESTART`) is tried again.
pub(super) fn open(
    client: &Client,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> Result<Connection, String> {
    let connect_timeout = connect_timeout.max(Duration::from_millis(1));
    let mut tries = 0;
    let con = loop {
        match client.get_connection_with_timeout(connect_timeout) {
            Ok(con) => break con,
            Err(e) if interrupted(&e) && tries < 3 => tries += 1,
            Err(e) => return Err(format!("connect: {}", reason(&e))),
        }
    };
    con.set_read_timeout(Some(io_timeout))
        .and_then(|()| con.set_write_timeout(Some(io_timeout)))
        .map_err(|e| format!("socket timeouts: {}", reason(&e)))?;
    Ok(con)
}

/// Sends one command and reads its reply; an error reply becomes `Err` with its text.
pub(super) fn call(con: &mut Connection, cmd: &Cmd) -> Result<Value, Failure> {
    match con.req_command(cmd) {
        Ok(Value::ServerError(e)) => Err(Failure::Refused(super::reply::error_text(&e))),
        Ok(v) => Ok(v),
        Err(e) if interrupted(&e) => Err(Failure::Interrupted),
        Err(e) => Err(Failure::Lost(reason(&e))),
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// Redis answered with an error reply (the connection is fine).
    Refused(String),
    /// No reply: I/O error, timeout, closed connection, unreadable reply.
    Lost(String),
    /// The read was interrupted (`EINTR`: the process was stopped and continued while a
    /// timed socket read waited). Nothing is wrong with Redis, but the crate has given up
    /// on that reply, so the connection is replaced at once, without counting an outage.
    Interrupted,
}

impl Failure {
    pub fn into_reason(self) -> String {
        match self {
            Failure::Refused(r) => format!("redis error: {r}"),
            Failure::Lost(r) => r,
            Failure::Interrupted => INTERRUPTED.to_string(),
        }
    }
}

/// The reason of `Failure::Interrupted`.
pub(super) const INTERRUPTED: &str = "interrupted by a stop and continue of the process";

/// Whether `e` is `EINTR`. The crate keeps an I/O error as an
/// `Arc<dyn Error + Send + Sync>`, which is what `source()` hands out.
pub(super) fn interrupted(e: &RedisError) -> bool {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let Some(source) = std::error::Error::source(e) else {
        return false;
    };
    let io = source.downcast_ref::<std::io::Error>().or_else(|| {
        source
            .downcast_ref::<Shared>()
            .and_then(|inner| inner.downcast_ref::<std::io::Error>())
    });
    io.is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted)
}

/// Which server a connection reached, and as what (`INFO server replication`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Identity {
    /// The process (`run_id`): a new one after every restart.
    pub run_id: String,
    /// The replication history (`master_replid`): a new one when a replica is promoted
    /// or a primary restarts without its data.
    pub replid: String,
    /// `master` or `slave`.
    pub role: String,
    /// A replica's link to its primary works (`master_link_status:up`); `false` on a
    /// primary.
    pub link_up: bool,
}

impl Identity {
    pub fn is_primary(&self) -> bool {
        self.role == "master"
    }

    /// `run_id`, shortened for log lines.
    pub fn short(&self) -> &str {
        self.run_id.get(..8).unwrap_or(&self.run_id)
    }
}

/// Asks the server who it is.
pub(super) fn identity(con: &mut Connection) -> Result<Identity, Failure> {
    let mut cmd = redis::cmd("INFO");
    cmd.arg("server").arg("replication");
    let text = match call(con, &cmd)? {
        Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::VerbatimString { text, .. } => text,
        Value::SimpleString(s) => s,
        _ => {
            return Err(Failure::Lost(
                "protocol error: unexpected INFO reply".into(),
            ));
        }
    };
    parse_identity(&text)
        .ok_or_else(|| Failure::Lost("protocol error: INFO lacks run_id or role".into()))
}

/// `run_id`, `master_replid` and `role` from `INFO` text.
pub(super) fn parse_identity(text: &str) -> Option<Identity> {
    let mut id = Identity::default();
    for line in text.lines() {
        let Some((k, v)) = line.trim_end().split_once(':') else {
            continue;
        };
        match k {
            "run_id" => id.run_id = v.to_string(),
            "master_replid" => id.replid = v.to_string(),
            "role" => id.role = v.to_string(),
            "master_link_status" => id.link_up = v == "up",
            _ => {}
        }
    }
    (!id.run_id.is_empty() && !id.role.is_empty()).then_some(id)
}

/// One line for logs and answers. I/O errors read as the OS says them ("Connection refused
/// (os error 111)", "timed out"), without the crate's decoration.
pub(super) fn reason(e: &RedisError) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.is_connection_dropped() {
        return format!("connection lost ({e})");
    }
    e.to_string()
}

/// Exponential backoff between connect attempts, 100 ms doubling to 5 s, each delay
/// drawn from its upper half so that nodes restarted together spread out.
pub(super) struct Backoff {
    next: Duration,
    rng: Rng,
}

impl Backoff {
    pub fn new(rng: Rng) -> Backoff {
        Backoff {
            next: BACKOFF_MIN,
            rng,
        }
    }

    /// The delay before the next attempt; doubles the one after it.
    pub fn delay(&mut self) -> Duration {
        let full = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let half = full / 2;
        let jitter_us = self.rng.below(half.as_micros() as u64 + 1);
        half + Duration::from_micros(jitter_us)
    }

    /// After a successful connect.
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds_with_jitter_and_resets() {
        let mut b = Backoff::new(Rng::new(7));
        let delays: Vec<Duration> = (0..10).map(|_| b.delay()).collect();
        let mut full = BACKOFF_MIN;
        for d in &delays {
            assert!(*d >= full / 2 && *d <= full, "{d:?} vs {full:?}");
            full = (full * 2).min(BACKOFF_MAX);
        }
        assert!(delays[9] >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.delay() <= BACKOFF_MIN);
    }

    #[test]
    fn eintr_is_told_apart_from_other_io_errors() {
        let eintr = RedisError::from(std::io::Error::from(std::io::ErrorKind::Interrupted));
        assert!(interrupted(&eintr));
        let raw = RedisError::from(std::io::Error::from_raw_os_error(4));
        assert!(interrupted(&raw), "{raw}");
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!interrupted(&reset));
    }

    #[test]
    fn identity_is_read_from_info_text() {
        let text = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123def456\r\n\r\n\
                    # Replication\r\nrole:slave\r\nmaster_replid:r1\r\nmaster_replid2:0\r\n";
        let id = parse_identity(text).expect("identity");
        assert_eq!(
            (id.run_id.as_str(), id.replid.as_str()),
            ("abc123def456", "r1")
        );
        assert!(!id.is_primary());
        assert!(!id.link_up, "no master_link_status line");
        assert_eq!(id.short(), "abc123de");
        let synced = parse_identity("run_id:x\r\nrole:slave\r\nmaster_link_status:up\r\n");
        assert!(synced.is_some_and(|id| id.link_up));
        assert_eq!(parse_identity("role:master\r\n"), None, "no run_id");
    }

    #[test]
    fn every_documented_url_scheme_is_accepted() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "redis://:secret@redis.example:6380/2",
            "rediss://redis.example/",
            "redis+unix:///run/redis/redis.sock",
            "unix:///run/redis/redis.sock",
        ] {
            assert!(client(url).is_ok(), "{url}");
        }
        for url in ["", "http://x/", "redis+unix://", "not a url"] {
            assert!(client(url).is_err(), "{url}");
        }
    }
}
