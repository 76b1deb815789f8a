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

/// Connects and sets both socket timeouts to `io_timeout`.
pub(super) fn open(
    client: &Client,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> Result<Connection, String> {
    let connect_timeout = connect_timeout.max(Duration::from_millis(1));
    let con = client
        .get_connection_with_timeout(connect_timeout)
        .map_err(|e| format!("connect: {}", reason(&e)))?;
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
}

impl Failure {
    pub fn into_reason(self) -> String {
        match self {
            Failure::Refused(r) => format!("redis error: {r}"),
            Failure::Lost(r) => r,
        }
    }
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
