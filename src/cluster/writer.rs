//! The writer thread: runs each batch the loop flushed as one pipeline (one `FCALL
//! ssehub_publish` per publish, then `WAIT` when `min_replicas > 0`) and answers every
//! publish exactly once, in order. On every connect it loads the Function library and
//! raises Redis's `last` to the highest id this node has seen. It never reads the stream
//! and never waits for a reconnect while publishes queue up: without a connection, batches
//! are refused at once (`not stored: …`).

use super::connection::{self, Backoff, Failure};
use super::keys::{self, Keys};
use super::reply;
use super::shared::{Shared, Side};
use super::{PublishRequest, Report};
use redis::{Client, Connection, Value};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Publishes flushed together: one pipeline, one `WAIT`.
pub(super) type Batch = Vec<(u64, PublishRequest)>;

/// An answer for the loop.
type Answer = (u64, Result<u64, String>);

/// How often an idle writer looks at the shutdown flag and the other side's failures.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// Extra time over `replica_timeout` the writer waits for a reply.
const REPLY_MARGIN: Duration = Duration::from_secs(2);

pub(super) struct Writer {
    shared: Arc<Shared>,
    client: Client,
    keys: Keys,
    con: Option<Connection>,
    backoff: Backoff,
    /// When the next connect attempt is due (without a connection).
    next_attempt: Instant,
    /// `Shared::failures` when this connection was last known good.
    failures_seen: u64,
}

impl Writer {
    pub fn new(shared: Arc<Shared>, client: Client, backoff: Backoff) -> Writer {
        let keys = Keys::new(&shared.options.key_prefix);
        Writer {
            shared,
            client,
            keys,
            con: None,
            backoff,
            next_attempt: Instant::now(),
            failures_seen: 0,
        }
    }

    pub fn run(mut self, batches: Receiver<Batch>) {
        loop {
            if self.shared.is_shutting_down() {
                return;
            }
            self.verify();
            let now = Instant::now();
            if self.con.is_none() && now >= self.next_attempt {
                self.connect();
                continue;
            }
            let wait = match self.con {
                Some(_) => IDLE_TICK,
                None => self
                    .next_attempt
                    .saturating_duration_since(now)
                    .min(IDLE_TICK),
            };
            match batches.recv_timeout(wait) {
                Ok(batch) => self.answer(batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn io_timeout(&self) -> Duration {
        self.shared.options.replica_timeout + REPLY_MARGIN
    }

    /// Connects, loads the library and raises `last`; on failure schedules the next try.
    fn connect(&mut self) {
        let failures_before = self.shared.failures();
        match self.try_connect() {
            Ok(con) => {
                self.con = Some(con);
                self.backoff.reset();
                self.failures_seen = failures_before;
                self.shared.set_side(Side::Writer, Ok(()));
            }
            Err(reason) => {
                self.shared.count_error();
                log::debug!("cluster: writer: {reason}");
                self.shared.set_side(Side::Writer, Err(&reason));
                self.next_attempt = Instant::now() + self.backoff.delay();
            }
        }
    }

    fn try_connect(&self) -> Result<Connection, String> {
        let o = &self.shared.options;
        let mut con = connection::open(&self.client, o.connect_timeout, self.io_timeout())?;
        connection::call(&mut con, &keys::load_library())
            .map_err(|f| format!("FUNCTION LOAD: {}", f.into_reason()))?;
        let highest = self.shared.highest_seen.load(Ordering::SeqCst);
        if highest > 0 {
            let raised = connection::call(&mut con, &keys::raise(&self.keys, highest))
                .map_err(|f| format!("raising last: {}", f.into_reason()))?;
            log::debug!(
                "cluster: writer connected; last raised to {:?} (highest seen {highest})",
                reply::id(&raised)
            );
        }
        Ok(con)
    }

    /// After a failure elsewhere (usually the reader seeing the server go), the writer
    /// makes sure its connection still works before the link is reported up again, so it
    /// does not sit on a dead one and turn the next publishes into `not confirmed`.
    fn verify(&mut self) {
        let Some(con) = self.con.as_mut() else {
            return;
        };
        let failures = self.shared.failures();
        if failures == self.failures_seen {
            return;
        }
        match connection::call(con, &redis::cmd("PING")) {
            Ok(_) | Err(Failure::Refused(_)) => {
                self.failures_seen = failures;
                self.shared.set_side(Side::Writer, Ok(()));
            }
            Err(Failure::Lost(reason)) => self.lost(&reason),
        }
    }

    /// The connection is gone: count it, report it, try again at once.
    fn lost(&mut self, reason: &str) {
        self.con = None;
        self.shared.count_error();
        log::debug!("cluster: writer: {reason}");
        self.shared.set_side(Side::Writer, Err(reason));
        self.next_attempt = Instant::now();
    }

    fn answer(&mut self, batch: Batch) {
        let n = batch.len();
        let answers = match self.con.as_mut() {
            None => {
                let why = format!(
                    "not stored: redis unavailable: {}",
                    self.shared.down_reason()
                );
                batch
                    .into_iter()
                    .map(|(seq, _)| (seq, Err(why.clone())))
                    .collect()
            }
            Some(_) => self.publish(batch),
        };
        for (_, result) in &answers {
            if let Ok(id) = result {
                self.shared.saw(*id);
                self.shared.acked_max.fetch_max(*id, Ordering::SeqCst);
            }
        }
        self.shared.push(Report::Answered(answers));
        self.shared.writer_pending.fetch_sub(n, Ordering::SeqCst);
    }

    /// Runs one batch as one pipeline; answers each publish.
    fn publish(&mut self, batch: Batch) -> Vec<Answer> {
        let options = &self.shared.options;
        let min_replicas = options.min_replicas;
        let mut pipe = redis::pipe();
        for (_, request) in &batch {
            pipe.add_command(keys::publish(&self.keys, options, request));
        }
        // WAIT 0 would wait forever.
        let wait_ms = (options.replica_timeout.as_millis() as u64).max(1);
        if min_replicas > 0 {
            pipe.cmd("WAIT").arg(min_replicas).arg(wait_ms);
        }
        let expected = pipe.len();
        let (replies, failure) = match self.con.as_mut() {
            Some(con) => exchange(con, &pipe.get_packed_pipeline(), expected),
            None => (Vec::new(), Some("not connected".to_string())),
        };
        let mut drop_connection = failure.clone();

        let mut replies = replies.into_iter();
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        for (seq, _) in &batch {
            let result = match replies.next() {
                Some(Value::ServerError(e)) => {
                    let text = reply::error_text(&e);
                    if text.starts_with("Function not found") {
                        // Flushed by someone: reconnect, which loads it again.
                        drop_connection.get_or_insert_with(|| text.clone());
                    }
                    Err(refusal(text))
                }
                Some(v) => reply::id(&v).ok_or_else(|| {
                    drop_connection.get_or_insert_with(|| "unexpected reply to FCALL".into());
                    "not confirmed: unexpected reply from redis".to_string()
                }),
                None => Err(format!(
                    "not confirmed: {}",
                    failure.as_deref().unwrap_or("no reply")
                )),
            };
            answers.push((*seq, result));
        }

        if min_replicas > 0 {
            let unconfirmed = match replies.next() {
                Some(Value::Int(n)) if n >= i64::from(min_replicas) => None,
                Some(Value::Int(n)) => Some(format!(
                    "not confirmed: only {n} of {min_replicas} replicas acknowledged within {}",
                    duration_text(Duration::from_millis(wait_ms))
                )),
                Some(Value::ServerError(e)) => Some(format!(
                    "not confirmed: WAIT failed: {}",
                    reply::error_text(&e)
                )),
                Some(_) => Some("not confirmed: unexpected reply to WAIT".to_string()),
                None => Some(format!(
                    "not confirmed: {}",
                    failure.as_deref().unwrap_or("no reply")
                )),
            };
            if let Some(why) = unconfirmed {
                for (_, result) in &mut answers {
                    if result.is_ok() {
                        *result = Err(why.clone());
                    }
                }
            }
        }
        if let Some(reason) = drop_connection {
            self.lost(&reason);
        }
        answers
    }
}

/// Sends a packed pipeline and reads up to `expected` replies; stops at the first failure
/// (a timed-out or closed connection is not read again: each further read would wait out
/// the timeout once more).
fn exchange(con: &mut Connection, packed: &[u8], expected: usize) -> (Vec<Value>, Option<String>) {
    if let Err(e) = con.send_packed_command(packed) {
        return (Vec::new(), Some(connection::reason(&e)));
    }
    let mut replies = Vec::with_capacity(expected);
    while replies.len() < expected {
        match con.recv_response() {
            Ok(v) => replies.push(v),
            Err(e) => return (replies, Some(connection::reason(&e))),
        }
    }
    (replies, None)
}

/// An error reply from the Function: `topic X is final` as it is; anything else (the
/// append failed, nothing stored) as `not stored: redis error: …`.
fn refusal(text: String) -> String {
    if text.starts_with("topic ") && text.ends_with(" is final") {
        text
    } else {
        format!("not stored: redis error: {text}")
    }
}

/// `500ms`, `2s`, `1500ms`.
pub(super) fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_durations_read_as_one_line() {
        assert_eq!(refusal("topic a/b is final".into()), "topic a/b is final");
        assert_eq!(
            refusal("OOM command not allowed".into()),
            "not stored: redis error: OOM command not allowed"
        );
        assert_eq!(duration_text(Duration::from_millis(500)), "500ms");
        assert_eq!(duration_text(Duration::from_secs(2)), "2s");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1500ms");
    }
}
