//! The reader thread: fills the node's history from the stream at start-up (`XRANGE` over
//! `history.max_age`, by Redis's clock), then follows it (`XREAD BLOCK`), checking that
//! every entry follows the one before and belongs to the same data set (`Chain`). On a
//! reconnect it checks that it reached the same server and data set (`run_id`,
//! `master_replid`, the epoch), that the node's position is still there (its last entry
//! with the same predecessor, or `last` at least as high) and that the writer's
//! acknowledged ids were not lost, and reports a `Gap` where it cannot rule one out —
//! forgetting up to the highest id anyone may have issued (`Reader::forget_mark`). Its only
//! write is creating the epoch of an empty data set.

use super::connection::{self, Backoff, Failure, Identity};
use super::keys::{self, Keys};
use super::reply::{self, RawEntry};
use super::shared::{Shared, Side};
use super::{Entry, Report, unix_us};
use redis::{Client, Cmd, Connection, Value};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Entries per `XRANGE` page and per `XREAD`.
const PAGE: usize = 1000;
/// `XREAD BLOCK`: also how soon the reader notices shutdown.
const BLOCK: Duration = Duration::from_secs(1);
/// Socket timeouts: a black-holed connection errors out instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(4);
/// An id acknowledged to the writer and not read for this long while `XREAD` returns
/// nothing: the reader's connection is presumed half-dead and is replaced.
const HALF_DEAD_AFTER: Duration = Duration::from_secs(3);

/// Why the reader stopped following.
#[derive(Debug)]
enum Stop {
    Shutdown,
    /// The connection failed (or cannot be trusted); reconnect.
    Lost(String),
    /// A read was interrupted (`Failure::Interrupted`): reconnect at once, not an outage.
    Interrupted,
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Stop {
        match f {
            Failure::Interrupted => Stop::Interrupted,
            f => Stop::Lost(f.into_reason()),
        }
    }
}

fn protocol(why: String) -> Stop {
    Stop::Lost(format!("protocol error: {why}"))
}

/// What `Chain::take` makes of the entries read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Entry(Entry),
    Gap {
        forget_up_to: u64,
        why: String,
        /// The entry was unreadable (logged and counted as an error).
        malformed: bool,
    },
}

/// The reader's position in the stream and the chain check. Pure.
#[derive(Debug, Clone)]
pub(super) struct Chain {
    /// The id the next entry must name as its previous (`p`): the last entry read, or
    /// Redis's `last` after the start-up fill when that is higher.
    pub last: u64,
    /// The `p` of the entry `last`, when `last` is an entry this node read.
    pub last_prev: Option<u64>,
    /// Where `XREAD` goes on from (`<ms>-<seq>` of the last entry read).
    pub cursor: String,
    /// The next entry is not checked (the first of the start-up fill).
    pub exempt_next: bool,
    /// The data set's epoch: an entry stamped with another one (field `x`) is a gap.
    /// Empty: not known yet.
    pub epoch: String,
}

impl Chain {
    pub fn new() -> Chain {
        Chain {
            last: 0,
            last_prev: None,
            cursor: "0-0".into(),
            exempt_next: false,
            epoch: String::new(),
        }
    }

    /// Checks entries in stream order: a `Gap` before any entry that does not follow the
    /// one before it; a malformed entry becomes a `Gap` up to its id and is not delivered.
    pub fn take(&mut self, raws: Vec<RawEntry>) -> Vec<Step> {
        let mut steps = Vec::with_capacity(raws.len());
        for raw in raws {
            let exempt = std::mem::take(&mut self.exempt_next);
            let checked = reply::entry(&raw).and_then(|e| {
                if e.id > self.last || exempt {
                    Ok(e)
                } else {
                    Err(format!("id {} is not above {}", e.id, self.last))
                }
            });
            match checked {
                Ok(entry) => {
                    let epoch = raw.fields.iter().find(|(k, _)| k == b"x").map(|(_, v)| v);
                    if let Some(epoch) = epoch
                        && !self.epoch.is_empty()
                        && epoch.as_slice() != self.epoch.as_bytes()
                    {
                        let epoch = String::from_utf8_lossy(epoch).into_owned();
                        steps.push(Step::Gap {
                            // The data set was replaced: ids up to this entry's may be gone.
                            forget_up_to: self.last.max(entry.prev).max(entry.id - 1),
                            why: format!(
                                "entry {} belongs to another data set (epoch {epoch}, not {})",
                                entry.id, self.epoch
                            ),
                            malformed: false,
                        });
                        self.epoch = epoch;
                    } else if !exempt && entry.prev != self.last {
                        steps.push(Step::Gap {
                            forget_up_to: self.last.max(entry.prev),
                            why: format!(
                                "entry {} follows {}, but the last entry read was {}",
                                entry.id, entry.prev, self.last
                            ),
                            malformed: false,
                        });
                    }
                    self.last = entry.id;
                    self.last_prev = Some(entry.prev);
                    steps.push(Step::Entry(entry));
                }
                Err(why) => {
                    steps.push(Step::Gap {
                        forget_up_to: self.last.max(raw.id),
                        why: format!("malformed entry {}: {why}", raw.stream_id),
                        malformed: true,
                    });
                    self.last = self.last.max(raw.id);
                    self.last_prev = None;
                }
            }
            self.cursor = raw.stream_id;
        }
        steps
    }

    /// After the start-up fill: Redis's `last` may be above the last entry (raised by a
    /// node's connect, or the entries trimmed); the next entry names it as its previous.
    /// `tail` is the stream's last entry (id, its `p` when readable).
    pub fn raise_to(&mut self, last_id: u64, tail: Option<(u64, Option<u64>)>) {
        if last_id > self.last {
            self.last = last_id;
            self.last_prev = tail.filter(|(id, _)| *id == last_id).and_then(|(_, p)| p);
            self.cursor = format!("{last_id}-0");
        }
    }
}

pub(super) struct Reader {
    shared: Arc<Shared>,
    client: Client,
    keys: Keys,
    chain: Chain,
    /// `Started` was reported: later connects are reconnects.
    started: bool,
    /// Acknowledged ids up to this one were found missing at a reconnect (and reported):
    /// the half-dead check no longer waits for them.
    ack_baseline: u64,
    backoff: Backoff,
    /// The server this node last read from.
    server: Identity,
    rng: crate::rng::Rng,
}

/// What a (re)connect learns before reading: who the server is, its data set's epoch, its
/// `last` and the stream's last entry, and its clock.
struct Position {
    server: Identity,
    epoch: String,
    /// The epoch did not exist: this connect created it (an empty or replaced data set).
    epoch_created: bool,
    stored_last: u64,
    /// The stream's last entry: (id, its `p` when readable).
    tail: Option<(u64, Option<u64>)>,
    now_us: u64,
}

impl Reader {
    pub fn new(
        shared: Arc<Shared>,
        client: Client,
        backoff: Backoff,
        rng: crate::rng::Rng,
    ) -> Reader {
        let keys = Keys::new(&shared.options.key_prefix);
        Reader {
            shared,
            client,
            keys,
            chain: Chain::new(),
            started: false,
            ack_baseline: 0,
            backoff,
            server: Identity::default(),
            rng,
        }
    }

    pub fn run(mut self) {
        while !self.shared.is_shutting_down() {
            let connect_timeout = self.shared.options.connect_timeout;
            let stop = match connection::open(&self.client, connect_timeout, IO_TIMEOUT) {
                Ok(mut con) => {
                    let ready = if self.started {
                        self.resume(&mut con)
                    } else {
                        self.start(&mut con)
                    };
                    match ready {
                        Ok(()) => self.follow(&mut con),
                        Err(stop) => stop,
                    }
                }
                Err(reason) => Stop::Lost(reason),
            };
            self.shared.set_server(Side::Reader, None);
            match stop {
                Stop::Shutdown => return,
                Stop::Interrupted => log::debug!("cluster: reader: {}", connection::INTERRUPTED),
                Stop::Lost(reason) => {
                    self.shared.count_error();
                    log::debug!("cluster: reader: {reason}");
                    self.shared.set_side(Side::Reader, Err(&reason));
                    if !self.shared.sleep(self.backoff.delay()) {
                        return;
                    }
                }
            }
        }
    }

    fn connected(&mut self) {
        self.backoff.reset();
        self.shared.set_side(Side::Reader, Ok(()));
    }

    /// Learns the server, the epoch (creating it on an empty data set), `last`, the tail
    /// and the clock, in that order.
    fn position(&mut self, con: &mut Connection) -> Result<Position, Stop> {
        let server = connection::identity(con)?;
        let candidate = format!("{:016x}", self.rng.next_u64());
        let claimed = connection::call(con, &keys::claim_epoch(&self.keys, &candidate))?;
        let existing = reply::optional_text(&claimed).map_err(protocol)?;
        let epoch_created = existing.is_none();
        let epoch = existing.unwrap_or(candidate);

        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GET")
            .arg(&self.keys.last)
            .cmd("XREVRANGE")
            .arg(&self.keys.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("TIME");
        let replies: Vec<Value> =
            pipe.query(con)
                .map_err(|e| match connection::interrupted(&e) {
                    true => Stop::Interrupted,
                    false => Stop::Lost(connection::reason(&e)),
                })?;
        let [stored_last, tail, time] = <[Value; 3]>::try_from(replies)
            .map_err(|r| protocol(format!("position transaction gave {} replies", r.len())))?;
        let stored_last = reply::optional_id(&stored_last)
            .map_err(protocol)?
            .unwrap_or(0);
        let tail = reply::range(tail)
            .map_err(protocol)?
            .into_iter()
            .next()
            .map(|raw| (raw.id, reply::entry(&raw).ok().map(|e| e.prev)));
        let now_us = reply::time_us(&time).map_err(protocol)?;
        Ok(Position {
            server,
            epoch,
            epoch_created,
            stored_last,
            tail,
            now_us,
        })
    }

    /// The highest id anyone may have issued or delivered, as far as this node can tell:
    /// its own position and what it saw, Redis's `last` and last entry, Redis's clock and
    /// its own (ids are never below the publishing node's clock or Redis's, so one right
    /// clock bounds every id issued before now). A gap forgets up to here.
    fn forget_mark(&self, at: &Position) -> u64 {
        self.chain
            .last
            .max(self.shared.highest_seen.load(Ordering::SeqCst))
            .max(at.stored_last)
            .max(at.tail.map_or(0, |(id, _)| id))
            .max(at.now_us)
            .max(unix_us())
    }

    /// The first successful connect: the history window in pages, then `Started`.
    fn start(&mut self, con: &mut Connection) -> Result<(), Stop> {
        let at = self.position(con)?;
        let max_age_us = self.shared.options.max_age.as_micros() as u64;
        let from_us = if max_age_us == 0 {
            0
        } else {
            at.now_us.saturating_sub(max_age_us)
        };
        let last_id = at.stored_last.max(at.tail.map_or(0, |(id, _)| id));
        self.shared.saw(last_id);
        self.chain.epoch = at.epoch.clone();

        let mut page = self.page(con, &format!("{from_us}-0"))?;
        // Resumes from below this cannot be proven complete: the first entry held, or,
        // with none, Redis's `last` (everything up to it trimmed by age), or, on an empty
        // data set, now (whatever a client saw before belonged to a data set that is gone).
        let remembers_from = match page.first() {
            Some(raw) => raw.id,
            None if last_id > 0 => last_id,
            None => at.now_us.max(unix_us()),
        };
        self.chain.exempt_next = true;
        loop {
            let full = page.len() == PAGE;
            let steps = self.chain.take(page);
            self.deliver(steps)?;
            if !full {
                break;
            }
            page = self.page(con, &format!("({}", self.chain.cursor))?;
        }
        self.chain.exempt_next = false;
        self.chain.raise_to(last_id, at.tail);
        self.shared.push(Report::Started {
            remembers_from,
            last_id,
        });
        self.started = true;
        self.adopt(at);
        self.connected();
        Ok(())
    }

    /// This connection's server and data set are the ones the node reads from now.
    fn adopt(&mut self, at: Position) {
        self.shared
            .set_server(Side::Reader, Some(&at.server.run_id));
        self.chain.epoch = at.epoch;
        self.server = at.server;
    }

    fn page(&self, con: &mut Connection, from: &str) -> Result<Vec<RawEntry>, Stop> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&self.keys.stream)
            .arg(from)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE);
        reply::range(connection::call(con, &cmd)?).map_err(protocol)
    }

    /// A reconnect: the same server and data set? Is the node's position still there? Are
    /// the ids acknowledged to this node's writer and not read yet still there? Any doubt is
    /// a gap up to `forget_mark`.
    fn resume(&mut self, con: &mut Connection) -> Result<(), Stop> {
        let at = self.position(con)?;
        let mark = self.forget_mark(&at);
        if let Some(why) = self.changed(&at) {
            self.report_gap(mark, why);
        } else if let Some(why) = self.check_position(con, at.stored_last)? {
            self.report_gap(mark, why);
        } else {
            let acked = self.shared.acked_max.load(Ordering::SeqCst);
            if acked > self.chain.last && acked > self.ack_baseline && !self.exists(con, acked)? {
                self.report_gap(
                    mark,
                    format!("acknowledged entry {acked} is not in the stream"),
                );
                self.ack_baseline = acked;
            }
        }
        self.adopt(at);
        self.connected();
        Ok(())
    }

    /// `Some(why)` when the connection reached another server (restarted, or another one
    /// behind the address), another replication history (a promoted replica), or another
    /// data set (the epoch is new or different).
    fn changed(&self, at: &Position) -> Option<String> {
        let was = &self.server;
        if at.epoch_created {
            return Some(format!(
                "the data set has no epoch (emptied or replaced; was {})",
                self.chain.epoch
            ));
        }
        if at.epoch != self.chain.epoch {
            return Some(format!(
                "the data set's epoch is {} (was {})",
                at.epoch, self.chain.epoch
            ));
        }
        if at.server.run_id != was.run_id {
            return Some(format!(
                "another server process ({}, was {})",
                at.server.short(),
                was.short()
            ));
        }
        if at.server.replid != was.replid {
            return Some(format!(
                "the server's replication history changed ({} → {}: failover or restart)",
                was.replid, at.server.replid
            ));
        }
        None
    }

    /// `Some(why)` when the node's position is gone: its last entry missing or following
    /// another one, or — when its position is a raised `last`, not an entry — `last` below it.
    fn check_position(
        &self,
        con: &mut Connection,
        stored_last: u64,
    ) -> Result<Option<String>, Stop> {
        let last = self.chain.last;
        if last == 0 {
            return Ok(None);
        }
        let Some(prev) = self.chain.last_prev else {
            return Ok((stored_last < last)
                .then(|| format!("last id {stored_last} is below this node's position {last}")));
        };
        let found = self.entry_at(con, last)?;
        Ok(match found {
            None => Some(format!("entry {last} is no longer in the stream")),
            Some(Ok(e)) if e.prev != prev => Some(format!(
                "entry {last} now follows {} instead of {prev}",
                e.prev
            )),
            Some(Err(why)) => Some(format!("entry {last} is now malformed: {why}")),
            Some(Ok(_)) => None,
        })
    }

    fn entry_at(
        &self,
        con: &mut Connection,
        id: u64,
    ) -> Result<Option<Result<Entry, String>>, Stop> {
        let mut cmd = redis::cmd("XRANGE");
        let at = format!("{id}-0");
        cmd.arg(&self.keys.stream).arg(&at).arg(&at);
        let raws = reply::range(connection::call(con, &cmd)?).map_err(protocol)?;
        Ok(raws.first().map(reply::entry))
    }

    fn exists(&self, con: &mut Connection, id: u64) -> Result<bool, Stop> {
        Ok(self.entry_at(con, id)?.is_some())
    }

    fn report_gap(&self, forget_up_to: u64, why: String) {
        log::debug!("cluster: gap up to {forget_up_to}: {why}");
        self.shared.push(Report::Gap { forget_up_to, why });
    }

    /// Follows the stream until the connection fails or the link shuts down.
    fn follow(&mut self, con: &mut Connection) -> Stop {
        let mut quiet_since: Option<Instant> = None;
        loop {
            if self.shared.is_shutting_down() {
                return Stop::Shutdown;
            }
            if self.shared.take_moved(Side::Reader) {
                return Stop::Lost("the address leads to another server now (failover)".into());
            }
            let raws = match self.read(con) {
                Ok(raws) => raws,
                Err(stop) => return stop,
            };
            if raws.is_empty() {
                self.shared.tail_reads.fetch_add(1, Ordering::SeqCst);
                let acked = self.shared.acked_max.load(Ordering::SeqCst);
                if acked > self.chain.last && acked > self.ack_baseline {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= HALF_DEAD_AFTER {
                        return Stop::Lost(format!(
                            "nothing read for {}s while entry {acked} was acknowledged \
                             (half-dead connection?)",
                            since.elapsed().as_secs()
                        ));
                    }
                } else {
                    quiet_since = None;
                }
                continue;
            }
            quiet_since = None;
            let at_tail = raws.len() < PAGE;
            let steps = self.chain.take(raws);
            if let Err(stop) = self.deliver(steps) {
                return stop;
            }
            if at_tail {
                self.shared.tail_reads.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn read(&self, con: &mut Connection) -> Result<Vec<RawEntry>, Stop> {
        let mut cmd: Cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(PAGE)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.keys.stream)
            .arg(&self.chain.cursor);
        reply::xread(connection::call(con, &cmd)?).map_err(protocol)
    }

    /// Hands steps to the loop in order: entries in batches, each gap before the entry
    /// that revealed it.
    fn deliver(&self, steps: Vec<Step>) -> Result<(), Stop> {
        let mut batch = Vec::new();
        for step in steps {
            match step {
                Step::Entry(entry) => {
                    self.shared.saw(entry.id);
                    batch.push(entry);
                }
                Step::Gap {
                    forget_up_to,
                    why,
                    malformed,
                } => {
                    if !self.shared.push_entries(std::mem::take(&mut batch)) {
                        return Err(Stop::Shutdown);
                    }
                    if malformed {
                        self.shared.count_error();
                        log::warn!("cluster: {why}; treated as a gap up to {forget_up_to}");
                    }
                    self.report_gap(forget_up_to, why);
                }
            }
        }
        if self.shared.push_entries(batch) {
            Ok(())
        } else {
            Err(Stop::Shutdown)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(id: u64, prev: u64) -> RawEntry {
        RawEntry {
            stream_id: format!("{id}-0"),
            id,
            seq: 0,
            fields: vec![
                (b"p".to_vec(), prev.to_string().into_bytes()),
                (b"t".to_vec(), b"a".to_vec()),
                (b"d".to_vec(), b"x".to_vec()),
                (b"m".to_vec(), b"1".to_vec()),
            ],
        }
    }

    fn kinds(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Entry(e) => format!("e{}", e.id),
                Step::Gap {
                    forget_up_to,
                    malformed,
                    ..
                } => format!("gap{forget_up_to}{}", if *malformed { "m" } else { "" }),
            })
            .collect()
    }

    #[test]
    fn a_chained_run_has_no_gap_and_the_fill_start_is_exempt() {
        let mut c = Chain::new();
        c.exempt_next = true;
        let steps = c.take(vec![raw(10, 5), raw(11, 10), raw(12, 11)]);
        assert_eq!(kinds(&steps), ["e10", "e11", "e12"]);
        assert_eq!(
            (c.last, c.last_prev, c.cursor.as_str()),
            (12, Some(11), "12-0")
        );
        // Without the exemption, the first entry must follow `last` (0 here).
        let mut c = Chain::new();
        assert_eq!(kinds(&c.take(vec![raw(10, 5)])), ["gap5", "e10"]);
    }

    #[test]
    fn a_broken_link_reports_the_gap_before_the_entry_then_accepts_it() {
        let mut c = Chain::new();
        c.exempt_next = true;
        let steps = c.take(vec![raw(10, 5), raw(20, 15), raw(21, 20), raw(30, 8)]);
        assert_eq!(
            kinds(&steps),
            ["e10", "gap15", "e20", "e21", "gap21", "e30"]
        );
    }

    #[test]
    fn a_malformed_entry_is_a_gap_up_to_its_id_and_is_not_delivered() {
        let mut c = Chain::new();
        c.last = 10;
        let mut bad = raw(11, 10);
        bad.fields.retain(|(k, _)| k != b"d");
        let mut odd_seq = raw(13, 12);
        odd_seq.seq = 1;
        odd_seq.stream_id = "13-1".into();
        let steps = c.take(vec![bad, raw(12, 11), odd_seq, raw(14, 13)]);
        assert_eq!(kinds(&steps), ["gap11m", "e12", "gap13m", "e14"]);
        assert_eq!(c.cursor, "14-0");
        // An entry that does not go forward is malformed too.
        let steps = c.take(vec![raw(14, 12)]);
        assert_eq!(kinds(&steps), ["gap14m"]);
    }

    #[test]
    fn raise_to_moves_past_the_fill_only_upwards() {
        let mut c = Chain::new();
        c.exempt_next = true;
        c.take(vec![raw(10, 5)]);
        c.exempt_next = false;
        c.raise_to(8, None);
        assert_eq!((c.last, c.last_prev), (10, Some(5)));
        c.raise_to(40, Some((10, Some(5))));
        assert_eq!((c.last, c.last_prev, c.cursor.as_str()), (40, None, "40-0"));
        let mut c = Chain::new();
        c.raise_to(40, Some((40, Some(30))));
        assert_eq!((c.last, c.last_prev), (40, Some(30)));
        assert_eq!(kinds(&c.take(vec![raw(41, 40)])), ["e41"]);
    }
}
