//! The writer thread: runs the batches the loop flushed (every batch queued by the time it
//! is free again, so publishes coalesce while a call is in flight) as one pipeline: one
//! `FCALL ssehub_publish_batch` per up to `MAX_CALL_EVENTS` publishes, then `WAIT` when
//! `min_replicas > 0`. It answers every publish exactly once, in order. On every connect it
//! makes sure it talks to a primary (`INFO`: role `master`), loads the Function library, learns the data set's epoch
//! (creating it on an empty one) and raises Redis's `last` to the highest id this node has
//! seen. After an error reply other than a refusal of the event itself (`READONLY` from a
//! demoted primary, `epoch changed`, a flushed Function, …), after a failure elsewhere and
//! when the probe finds the URL leading to another server, it checks or replaces its
//! connection, and the link is down meanwhile. It never reads the stream and never waits
//! for a reconnect while publishes queue up: without a connection, batches are refused at
//! once (`not stored: …`).

use super::connection::{self, Backoff, Identity};
use super::keys::{self, Keys, Stamp};
use super::reply;
use super::shared::{Shared, Side};
use super::{PublishRequest, Report, unix_us};
use redis::{Client, Connection, Value};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Publishes flushed together (one loop turn's).
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
    /// The server the connection reached and the data set's epoch there.
    server: Identity,
    epoch: String,
    rng: crate::rng::Rng,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        client: Client,
        backoff: Backoff,
        rng: crate::rng::Rng,
    ) -> Writer {
        let keys = Keys::new(&shared.options.key_prefix);
        Writer {
            shared,
            client,
            keys,
            con: None,
            backoff,
            next_attempt: Instant::now(),
            failures_seen: 0,
            server: Identity::default(),
            epoch: String::new(),
            rng,
        }
    }

    pub fn run(mut self, batches: Receiver<Batch>) {
        loop {
            if self.shared.is_shutting_down() {
                return;
            }
            if self.shared.take_moved(Side::Writer) && self.con.is_some() {
                self.lost("the address leads to another server now (failover)");
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
                Ok(mut batch) => {
                    // `cluster.write_linger`: more turns' publishes join this call.
                    let linger = self.shared.options.write_linger;
                    let until = Instant::now() + linger;
                    while batch.len() < MAX_CALL_EVENTS {
                        let left = until.saturating_duration_since(Instant::now());
                        match batches.recv_timeout(left) {
                            Ok(more) => batch.extend(more),
                            Err(_) => break,
                        }
                    }
                    // What queued up while the last call was in flight goes in this one.
                    while let Ok(more) = batches.try_recv() {
                        batch.extend(more);
                    }
                    // A failure seen elsewhere since the last look (the reader's, or a
                    // replica that lost its primary): check the connection first, and
                    // replace a dead one, rather than send on it.
                    self.verify();
                    if self.con.is_none() && Instant::now() >= self.next_attempt {
                        self.connect();
                    }
                    self.answer(batch)
                }
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
            Ok((con, server, epoch)) => {
                if !self.epoch.is_empty() && self.epoch != epoch {
                    log::info!("cluster: writer: the data set's epoch is now {epoch}");
                }
                self.con = Some(con);
                self.shared.set_server(Side::Writer, Some(&server.run_id));
                self.server = server;
                self.epoch = epoch;
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

    fn try_connect(&mut self) -> Result<(Connection, Identity, String), String> {
        let o = &self.shared.options;
        let mut con = connection::open(&self.client, o.connect_timeout, self.io_timeout())?;
        let server =
            connection::identity(&mut con).map_err(|f| format!("INFO: {}", f.into_reason()))?;
        if !server.is_primary() {
            return Err(format!(
                "the server is not a primary (role {}); waiting for one",
                server.role
            ));
        }
        connection::call(&mut con, &keys::load_library())
            .map_err(|f| format!("FUNCTION LOAD: {}", f.into_reason()))?;
        let candidate = format!("{:016x}", self.rng.next_u64());
        let claimed = connection::call(&mut con, &keys::claim_epoch(&self.keys, &candidate))
            .map_err(|f| format!("epoch: {}", f.into_reason()))?;
        let epoch = reply::optional_text(&claimed)
            .map_err(|why| format!("epoch: {why}"))?
            .unwrap_or(candidate);
        let highest = self.shared.highest_seen.load(Ordering::SeqCst);
        if highest > 0 {
            let raised = connection::call(&mut con, &keys::raise(&self.keys, highest))
                .map_err(|f| format!("raising last: {}", f.into_reason()))?;
            log::debug!(
                "cluster: writer connected; last raised to {:?} (highest seen {highest})",
                reply::id(&raised)
            );
        }
        Ok((con, server, epoch))
    }

    /// After a failure elsewhere (usually the reader seeing the server go), the writer
    /// makes sure its connection still reaches the same server, still a primary, before the
    /// link is reported up again, so it does not sit on a dead or demoted one and turn the
    /// next publishes into `not confirmed` or `READONLY`.
    fn verify(&mut self) {
        let Some(con) = self.con.as_mut() else {
            return;
        };
        let failures = self.shared.failures();
        if failures == self.failures_seen {
            return;
        }
        match connection::identity(con) {
            Ok(id) if id.is_primary() && id.run_id == self.server.run_id => {
                self.failures_seen = failures;
                self.shared.set_side(Side::Writer, Ok(()));
            }
            Ok(id) => self.lost(&format!(
                "the server {} is now a {} (was the primary {})",
                id.short(),
                id.role,
                self.server.short()
            )),
            Err(f) => self.lost(&f.into_reason()),
        }
    }

    /// The connection is gone: count it, report it, try again at once.
    fn lost(&mut self, reason: &str) {
        self.con = None;
        self.shared.set_server(Side::Writer, None);
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

    /// Runs one batch as one pipeline (one `FCALL ssehub_publish_batch` per chunk, then
    /// `WAIT`); answers each publish.
    fn publish(&mut self, batch: Batch) -> Vec<Answer> {
        let options = &self.shared.options;
        let min_replicas = options.min_replicas;
        let stamp = Stamp {
            epoch: &self.epoch,
            node_now_us: unix_us(),
        };
        let chunks = chunks(&self.keys, &batch);
        let mut pipe = redis::pipe();
        for chunk in &chunks {
            let requests = batch[chunk.clone()].iter().map(|(_, request)| request);
            pipe.add_command(keys::publish_batch(&self.keys, options, requests, stamp));
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
        for chunk in chunks {
            let part = &batch[chunk];
            match replies.next() {
                Some(Value::Array(values)) if values.len() == part.len() => {
                    for ((seq, request), value) in part.iter().zip(values) {
                        let result = event_result(value, request, &mut drop_connection);
                        answers.push((*seq, result));
                    }
                }
                other => {
                    for (seq, request) in part {
                        let result = match &other {
                            // The whole call refused (nothing stored): `epoch changed`,
                            // `READONLY`, a flushed Function, …: each publish is answered
                            // as a lone one would be.
                            Some(e @ Value::ServerError(_)) => {
                                event_result(e.clone(), request, &mut drop_connection)
                            }
                            Some(_) => {
                                drop_connection
                                    .get_or_insert_with(|| "unexpected reply to FCALL".into());
                                Err("not confirmed: unexpected reply from redis".to_string())
                            }
                            None => Err(format!(
                                "not confirmed: {}",
                                failure.as_deref().unwrap_or("no reply")
                            )),
                        };
                        answers.push((*seq, result));
                    }
                }
            }
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
        match drop_connection {
            // Not an outage: the process was stopped and continued mid-reply.
            Some(reason) if reason == connection::INTERRUPTED => {
                self.con = None;
                self.shared.set_server(Side::Writer, None);
                self.next_attempt = Instant::now();
            }
            Some(reason) => self.lost(&reason),
            None => {}
        }
        answers
    }
}

/// Sends a packed pipeline and reads up to `expected` replies; stops at the first failure
/// (a timed-out or closed connection is not read again: each further read would wait out
/// the timeout once more).
fn exchange(con: &mut Connection, packed: &[u8], expected: usize) -> (Vec<Value>, Option<String>) {
    let why = |e: &redis::RedisError| match connection::interrupted(e) {
        true => connection::INTERRUPTED.to_string(),
        false => connection::reason(e),
    };
    if let Err(e) = con.send_packed_command(packed) {
        return (Vec::new(), Some(why(&e)));
    }
    let mut replies = Vec::with_capacity(expected);
    while replies.len() < expected {
        match con.recv_response() {
            Ok(v) => replies.push(v),
            Err(e) => return (replies, Some(why(&e))),
        }
    }
    (replies, None)
}

/// The most publishes one `FCALL` carries, and about the most bytes of arguments: a call
/// runs atomically in Redis, which serves nothing else meanwhile.
const MAX_CALL_EVENTS: usize = 1000;
const MAX_CALL_BYTES: usize = 1 << 20;

/// The batch cut into consecutive ranges of at most `MAX_CALL_EVENTS` publishes and about
/// `MAX_CALL_BYTES` (a single larger publish is a call of its own).
fn chunks(keys: &Keys, batch: &Batch) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, request)) in batch.iter().enumerate() {
        let size = keys::publish_size(keys, request);
        if i > start && (i - start == MAX_CALL_EVENTS || bytes + size > MAX_CALL_BYTES) {
            chunks.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < batch.len() {
        chunks.push(start..batch.len());
    }
    chunks
}

/// One element of a batch call's reply: an id, or an error reply refusing this event (or,
/// after an unexpected error inside the Function, saying it was not stored).
fn event_result(
    value: Value,
    request: &PublishRequest,
    drop_connection: &mut Option<String>,
) -> Result<u64, String> {
    match value {
        Value::ServerError(e) => {
            let refused = refusal(reply::error_text(&e), request.key.as_deref());
            if let Refusal::Server(why) = &refused {
                // Not a refusal of the event: the connection is replaced, and the reconnect
                // checks the server is a primary and reloads the Function.
                drop_connection.get_or_insert_with(|| why.clone());
            }
            Err(refused.into_answer())
        }
        v => reply::id(&v).ok_or_else(|| {
            drop_connection.get_or_insert_with(|| "unexpected reply to FCALL".into());
            "not confirmed: unexpected reply from redis".to_string()
        }),
    }
}

/// What an error reply to a publish means.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The event itself is refused (the answer as it is); the connection is fine.
    Event(String),
    /// The server refused (nothing stored): `READONLY`, `epoch changed`, …
    Server(String),
}

impl Refusal {
    fn into_answer(self) -> String {
        match self {
            Refusal::Event(answer) => answer,
            Refusal::Server(why) => format!("not stored: redis error: {why}"),
        }
    }
}

/// An error reply from the Function: `topic X is final` as it is, a key used for another
/// event named, anything else (nothing stored) a refusal by the server.
fn refusal(text: String, key: Option<&str>) -> Refusal {
    if text.starts_with("topic ") && text.ends_with(" is final") {
        Refusal::Event(text)
    } else if text == "key used for a different event" {
        let key = key.unwrap_or("");
        Refusal::Event(format!("\"key\" {key} was used for a different event"))
    } else if text == "epoch changed" {
        Refusal::Server("the data set changed (epoch); reconnecting".into())
    } else {
        Refusal::Server(text)
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
        assert_eq!(
            refusal("topic a/b is final".into(), None),
            Refusal::Event("topic a/b is final".into())
        );
        assert_eq!(
            refusal("key used for a different event".into(), Some("k1")).into_answer(),
            "\"key\" k1 was used for a different event"
        );
        assert_eq!(
            refusal("OOM command not allowed".into(), None).into_answer(),
            "not stored: redis error: OOM command not allowed"
        );
        assert!(matches!(
            refusal(
                "READONLY You can't write against a read only replica.".into(),
                None
            ),
            Refusal::Server(_)
        ));
        assert_eq!(duration_text(Duration::from_millis(500)), "500ms");
        assert_eq!(duration_text(Duration::from_secs(2)), "2s");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn a_batch_is_cut_into_calls_by_count_and_size() {
        let keys = Keys::new("hub");
        let publish = |data: String| PublishRequest {
            topics: vec!["a".into()],
            event: None,
            data: data.into(),
            is_final: false,
            key: None,
        };
        let small: Batch = (0..2500).map(|i| (i, publish("x".into()))).collect();
        assert_eq!(chunks(&keys, &small), [0..1000, 1000..2000, 2000..2500]);
        let big = || publish("y".repeat(MAX_CALL_BYTES / 2));
        let mixed: Batch = vec![(1, big()), (2, big()), (3, publish("z".into())), (4, big())];
        assert_eq!(chunks(&keys, &mixed), [0..1, 1..3, 3..4]);
        let huge: Batch = vec![(1, publish("w".repeat(2 * MAX_CALL_BYTES)))];
        let one: Vec<Range<usize>> = vec![Range { start: 0, end: 1 }];
        assert_eq!(
            chunks(&keys, &huge),
            one,
            "one large publish: a call of its own"
        );
        assert!(chunks(&keys, &Vec::new()).is_empty());
    }
}
