//! The reader thread: fills the node's history from the stream at start-up (`XRANGE` over
//! `history.max_age`, by Redis's clock), then follows it (`XREAD BLOCK`), checking that
//! every entry follows the one before and belongs to the same data set (`Chain`). On a
//! reconnect it checks that it reached the same data set and replication history (the
//! epoch, `master_replid`, and from primary to primary `run_id`), that the node's position
//! is still there (its last entry with the same predecessor, or `last` at least as high)
//! and that the writer's acknowledged ids were not lost, and reports a `Gap` where it
//! cannot rule one out — forgetting up to the highest id anyone may have issued
//! (`Reader::forget_mark`).
//!
//! It reads from the first replica of `cluster.read_from` that is in sync (`Source`),
//! else from the primary. A replica that lacks what the node read or was acknowledged is
//! behind, not a gap: it is waited for briefly, then left for the next source. With
//! `min_replicas` it delivers nothing until that many replicas hold it (`confirm`). Its
//! only write is creating the epoch of an empty data set (on the primary) and the
//! confirming `PUBLISH`.

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
/// The same on a replica, where `XREAD` blocks 100 ms at most: a replica that stops
/// answering is left within about a second.
const REPLICA_IO_TIMEOUT: Duration = Duration::from_secs(1);
/// An id acknowledged to the writer and not read for this long while `XREAD` returns
/// nothing: the reader's connection is presumed half-dead (a replica: lagging) and is
/// replaced.
const HALF_DEAD_AFTER: Duration = Duration::from_secs(3);
/// A replica found unusable (not in sync, behind, unreachable) is not tried for this long.
const SKIP_FOR: Duration = Duration::from_secs(10);
/// How long a reconnect waits for a replica that is behind the node's position.
const BEHIND_WAIT: Duration = Duration::from_secs(1);
const BEHIND_POLL: Duration = Duration::from_millis(20);
/// How often a reader on a replica checks that it is still in sync.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// A reader on a fallback (the primary, or a later replica) tries the earlier replicas
/// again after this long.
const RETRY_PREFERRED_EVERY: Duration = Duration::from_secs(10);
/// `XREAD BLOCK` while a tail check waits for the replica to reach the primary's `last`.
const TAIL_CHECK_BLOCK: Duration = Duration::from_millis(20);
/// `XREAD BLOCK` on a replica: a tail check the loop asks for starts within it (ten idle
/// reads a second cost the replica, not the primary).
const REPLICA_BLOCK: Duration = Duration::from_millis(100);

/// Why the reader stopped following.
#[derive(Debug)]
enum Stop {
    Shutdown,
    /// The connection failed (or cannot be trusted); reconnect.
    Lost(String),
    /// A read was interrupted (`Failure::Interrupted`): reconnect at once, not an outage.
    Interrupted,
    /// Leave this source for the next one at once (a replica not in sync, behind, or
    /// lagging; a fallback trying its preferred replicas again): not an outage.
    Switch(String),
    /// Reconnect to the same source at once (a replica's history changed: the resume
    /// decides about a gap).
    Retry,
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

/// A server the reader may read from: a replica of `cluster.read_from`, or the primary
/// (`cluster.redis`, always the last).
pub(super) struct Source {
    /// For log lines, without a password.
    name: String,
    client: Client,
    replica: bool,
    /// Found unusable (not in sync, behind, unreachable): not tried again before this.
    skip_until: Option<Instant>,
}

impl Source {
    pub fn replica(url: &str, client: Client) -> Source {
        Source {
            name: display_url(url),
            client,
            replica: true,
            skip_until: None,
        }
    }

    pub fn primary(url: &str, client: Client) -> Source {
        Source {
            replica: false,
            ..Source::replica(url, client)
        }
    }
}

/// A Redis URL without its password, for log lines.
fn display_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://…{}", &url[at..]),
        _ => url.to_string(),
    }
}

/// What a reconnect found.
enum Verdict {
    /// The node's position is there and nothing it was told of is missing.
    Continues,
    /// Entries may be lost: a gap.
    Gap(String),
    /// A replica has not received yet what the node read or was acknowledged.
    Behind(String),
}

/// A tail check on a replica (`Link::want_tail`): the primary's `last` when asked, and
/// whether the replica has received up to it.
#[derive(Debug, Clone, Copy)]
struct TailCheck {
    primary_last: u64,
    covered: bool,
}

pub(super) struct Reader {
    shared: Arc<Shared>,
    /// The replicas of `read_from` in order, then the primary.
    sources: Vec<Source>,
    /// The source of the current (or last) connection.
    at: usize,
    /// When reading from a replica: a connection to the primary for confirmations
    /// (`min_replicas` above 1) and tail checks; opened when first needed.
    primary: Option<Connection>,
    keys: Keys,
    chain: Chain,
    /// `Started` was reported: later connects are reconnects.
    started: bool,
    /// The start-up fill's first id (set by its first page).
    remembers_from: Option<u64>,
    /// Acknowledged ids up to this one were found missing at a reconnect (and reported):
    /// the half-dead check no longer waits for them.
    ack_baseline: u64,
    backoff: Backoff,
    /// The server this node last read from.
    server: Identity,
    /// `tail_wanted` already answered by a tail check.
    tail_asked: u64,
    tail_check: Option<TailCheck>,
    /// Confirmations that fell short in a row (logged once per run).
    unconfirmed: u32,
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
        sources: Vec<Source>,
        backoff: Backoff,
        rng: crate::rng::Rng,
    ) -> Reader {
        let keys = Keys::new(&shared.options.key_prefix);
        Reader {
            shared,
            at: sources.len().saturating_sub(1),
            sources,
            primary: None,
            keys,
            chain: Chain::new(),
            started: false,
            remembers_from: None,
            ack_baseline: 0,
            backoff,
            server: Identity::default(),
            tail_asked: 0,
            tail_check: None,
            unconfirmed: 0,
            rng,
        }
    }

    fn on_replica(&self) -> bool {
        self.sources.get(self.at).is_some_and(|s| s.replica)
    }

    pub fn run(mut self) {
        while !self.shared.is_shutting_down() {
            let stop = match self.open_source() {
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
                Stop::Switch(why) => {
                    if let Some(s) = self.sources.get_mut(self.at)
                        && s.replica
                    {
                        s.skip_until = Some(Instant::now() + SKIP_FOR);
                    }
                    log::info!(
                        "cluster: reader: leaves {}: {why}",
                        self.sources.get(self.at).map_or("", |s| s.name.as_str())
                    );
                }
                Stop::Retry => {}
                Stop::Lost(reason) if self.on_replica() => {
                    // The replica failed, not Redis: the next source is tried at once.
                    self.shared.count_error();
                    if let Some(s) = self.sources.get_mut(self.at) {
                        s.skip_until = Some(Instant::now() + SKIP_FOR);
                        log::warn!("cluster: reader: leaves the replica {}: {reason}", s.name);
                    }
                }
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

    /// Connects to the first replica that answers and is in sync (with an epoch), else to
    /// the primary. `Err` only when the primary cannot be reached.
    fn open_source(&mut self) -> Result<Connection, String> {
        let now = Instant::now();
        let mut opened = None;
        for i in 0..self.sources.len() {
            let source = &self.sources[i];
            if !source.replica {
                let timeout = self.shared.options.connect_timeout;
                let con = connection::open(&source.client, timeout, IO_TIMEOUT);
                if con.is_err() {
                    // A failure of the primary, not of a replica (`run` backs off).
                    self.at = i;
                    self.shared.on_replica.store(false, Ordering::SeqCst);
                }
                opened = Some((i, con?));
                break;
            }
            if source.skip_until.is_some_and(|t| t > now) {
                continue;
            }
            match self.open_replica(i) {
                Ok(con) => {
                    self.sources[i].skip_until = None;
                    opened = Some((i, con));
                    break;
                }
                Err(why) => {
                    let source = &mut self.sources[i];
                    log::debug!("cluster: reader: replica {} not used: {why}", source.name);
                    source.skip_until = Some(now + SKIP_FOR);
                }
            }
        }
        let (i, con) = opened.ok_or("no source to read from")?;
        if i != self.at {
            let source = &self.sources[i];
            let what = if source.replica { "replica" } else { "primary" };
            log::info!("cluster: reader: reads from the {what} {}", source.name);
        }
        self.at = i;
        let replica = self.on_replica();
        self.shared.on_replica.store(replica, Ordering::SeqCst);
        if !replica {
            self.primary = None;
        }
        Ok(con)
    }

    /// A connection to the replica `sources[i]` when it is in sync. On an empty data set
    /// the epoch is created on the primary (as a reader there would) and waited for.
    fn open_replica(&mut self, i: usize) -> Result<Connection, String> {
        let timeout = self.shared.options.connect_timeout;
        let mut con = connection::open(&self.sources[i].client, timeout, REPLICA_IO_TIMEOUT)?;
        let mut has_epoch = replica_in_sync(&mut con, &self.keys)?;
        if !has_epoch {
            let primary = &self.sources.last().ok_or("no primary")?.client;
            let mut p = connection::open(primary, timeout, IO_TIMEOUT)?;
            let candidate = format!("{:016x}", self.rng.next_u64());
            connection::call(&mut p, &keys::claim_epoch(&self.keys, &candidate))
                .map_err(Failure::into_reason)?;
            let deadline = Instant::now() + BEHIND_WAIT;
            while !has_epoch && Instant::now() < deadline {
                std::thread::sleep(BEHIND_POLL);
                has_epoch = replica_in_sync(&mut con, &self.keys)?;
            }
        }
        match has_epoch {
            true => Ok(con),
            false => Err("it holds no epoch yet".into()),
        }
    }

    fn connected(&mut self) {
        self.backoff.reset();
        self.shared.set_side(Side::Reader, Ok(()));
    }

    /// Learns the server, the epoch (creating it on an empty data set; a replica's must
    /// exist), `last`, the tail and the clock, in that order.
    fn position(&mut self, con: &mut Connection) -> Result<Position, Stop> {
        let server = connection::identity(con)?;
        let (epoch, epoch_created) = if self.on_replica() {
            let mut get = redis::cmd("GET");
            get.arg(&self.keys.epoch);
            let epoch = reply::optional_text(&connection::call(con, &get)?).map_err(protocol)?;
            (
                epoch.ok_or(Stop::Switch("the replica holds no epoch".into()))?,
                false,
            )
        } else {
            let candidate = format!("{:016x}", self.rng.next_u64());
            let claimed = connection::call(con, &keys::claim_epoch(&self.keys, &candidate))?;
            let existing = reply::optional_text(&claimed).map_err(protocol)?;
            let created = existing.is_none();
            (existing.unwrap_or(candidate), created)
        };

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
        let replies: Vec<Value> = pipe.query(con).map_err(pipeline_stop)?;
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

        // A fill cut short by a failure goes on after what it delivered.
        let resumed = self.chain.last > 0;
        let from = match resumed {
            true => format!("({}", self.chain.cursor),
            false => format!("{from_us}-0"),
        };
        let mut page = self.page(con, &from)?;
        // Resumes from below this cannot be proven complete: the first entry held, or,
        // with none, Redis's `last` (everything up to it trimmed by age), or, on an empty
        // data set, now (whatever a client saw before belonged to a data set that is gone).
        let remembers_from = self.remembers_from.unwrap_or(match page.first() {
            Some(raw) => raw.id,
            None if last_id > 0 => last_id,
            None => at.now_us.max(unix_us()),
        });
        self.chain.exempt_next = !resumed;
        loop {
            let full = page.len() == PAGE;
            if !page.is_empty() {
                self.confirm(con)?;
            }
            let steps = self.chain.take(page);
            self.deliver(steps)?;
            self.remembers_from = Some(remembers_from);
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

    /// This connection's server and data set are the ones the node reads from now. The
    /// probe compares the primary it finds with this server only when it is the primary.
    fn adopt(&mut self, at: Position) {
        let run_id = (!self.on_replica()).then_some(at.server.run_id.as_str());
        self.shared.set_server(Side::Reader, run_id);
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

    /// A reconnect: the same data set and replication history? Is the node's position
    /// still there? Are the ids acknowledged to this node's writer and not read yet still
    /// there? Any doubt is a gap up to `forget_mark`. A replica that has not yet received
    /// what the node read or was acknowledged is waited for up to `BEHIND_WAIT`, then
    /// left for the next source (no gap: the primary has it).
    fn resume(&mut self, con: &mut Connection) -> Result<(), Stop> {
        let deadline = Instant::now() + BEHIND_WAIT;
        let at = loop {
            let at = self.position(con)?;
            let verdict = match self.changed(&at) {
                Some(why) => Verdict::Gap(why),
                None => self.verify(con, &at)?,
            };
            match verdict {
                Verdict::Continues => break at,
                Verdict::Gap(why) => {
                    let mark = self.forget_mark(&at);
                    self.report_gap(mark, why);
                    break at;
                }
                Verdict::Behind(why) if Instant::now() >= deadline => {
                    return Err(Stop::Switch(why));
                }
                Verdict::Behind(_) => {
                    if !self.shared.sleep(BEHIND_POLL) {
                        return Err(Stop::Shutdown);
                    }
                }
            }
        };
        self.adopt(at);
        self.connected();
        Ok(())
    }

    /// `Some(why)` when the connection reached another data set (the epoch is new or
    /// different), another replication history (a promoted replica, a restart without
    /// the data), or — from primary to primary — another server process (restarted, or
    /// another one behind the address). Moving between a replica and the primary is not
    /// a change by itself: `verify` checks the position.
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
        if at.server.is_primary() && was.is_primary() && at.server.run_id != was.run_id {
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

    /// Whether the node's position is still there (its last entry with the same
    /// predecessor, or — when its position is a raised `last`, not an entry — `last` at
    /// least as high) and the ids acknowledged to this node's writer and not read yet
    /// exist. On a replica whose `last` is below what is missing, it is `Behind`.
    fn verify(&mut self, con: &mut Connection, at: &Position) -> Result<Verdict, Stop> {
        let replica = self.on_replica();
        let last = self.chain.last;
        let missing = if last == 0 {
            None
        } else if let Some(prev) = self.chain.last_prev {
            match self.entry_at(con, last)? {
                None => Some(format!("entry {last} is no longer in the stream")),
                Some(Ok(e)) if e.prev != prev => {
                    return Ok(Verdict::Gap(format!(
                        "entry {last} now follows {} instead of {prev}",
                        e.prev
                    )));
                }
                Some(Err(why)) => {
                    return Ok(Verdict::Gap(format!(
                        "entry {last} is now malformed: {why}"
                    )));
                }
                Some(Ok(_)) => None,
            }
        } else {
            (at.stored_last < last).then(|| {
                format!(
                    "last id {} is below this node's position {last}",
                    at.stored_last
                )
            })
        };
        if let Some(why) = missing {
            return Ok(if replica && at.stored_last < last {
                Verdict::Behind(format!("the replica is behind ({why})"))
            } else {
                Verdict::Gap(why)
            });
        }
        let acked = self.shared.acked_max.load(Ordering::SeqCst);
        if acked > last && acked > self.ack_baseline && !self.exists(con, acked)? {
            return Ok(if replica && at.stored_last < acked {
                Verdict::Behind(format!(
                    "the replica has not received acknowledged entry {acked}"
                ))
            } else {
                // Reported once: the half-dead check no longer waits for it.
                self.ack_baseline = acked;
                Verdict::Gap(format!("acknowledged entry {acked} is not in the stream"))
            });
        }
        Ok(Verdict::Continues)
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

    /// Follows the stream until the connection fails, the link shuts down, or (on a
    /// replica) the replica stops being usable, or (on a fallback) it is time to try the
    /// preferred replicas again.
    fn follow(&mut self, con: &mut Connection) -> Stop {
        let replica = self.on_replica();
        let since = Instant::now();
        let mut looked = since;
        let mut quiet_since: Option<Instant> = None;
        loop {
            if self.shared.is_shutting_down() {
                return Stop::Shutdown;
            }
            if self.shared.take_moved(Side::Reader) {
                return Stop::Lost("the address leads to another server now (failover)".into());
            }
            if looked.elapsed() >= LOOK_EVERY {
                looked = Instant::now();
                if let Some(stop) = self.look_around(con, since) {
                    return stop;
                }
            }
            let block = match replica {
                true => match self.tail_check(con) {
                    Ok(true) => TAIL_CHECK_BLOCK,
                    Ok(false) => REPLICA_BLOCK,
                    Err(stop) => return stop,
                },
                false => BLOCK,
            };
            let raws = match self.read(con, block) {
                Ok(raws) => raws,
                Err(stop) => return stop,
            };
            if raws.is_empty() {
                self.count_tail_read(replica);
                let acked = self.shared.acked_max.load(Ordering::SeqCst);
                if acked > self.chain.last && acked > self.ack_baseline {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= HALF_DEAD_AFTER {
                        let why = format!(
                            "nothing read for {}s while entry {acked} was acknowledged",
                            since.elapsed().as_secs()
                        );
                        return match replica {
                            true => Stop::Switch(format!("{why} (replica lagging?)")),
                            false => Stop::Lost(format!("{why} (half-dead connection?)")),
                        };
                    }
                } else {
                    quiet_since = None;
                }
                continue;
            }
            quiet_since = None;
            let at_tail = raws.len() < PAGE;
            if let Err(stop) = self.confirm(con) {
                return stop;
            }
            let steps = self.chain.take(raws);
            if let Err(stop) = self.deliver(steps) {
                return stop;
            }
            if at_tail {
                self.count_tail_read(replica);
                let linger = self.shared.options.read_linger;
                if !linger.is_zero() && !self.shared.sleep(linger) {
                    return Stop::Shutdown;
                }
            }
        }
    }

    /// Once a second while following: a replica must still be in sync with the same
    /// primary's history; a node reading from a fallback tries its preferred replicas
    /// again every `RETRY_PREFERRED_EVERY`.
    fn look_around(&mut self, con: &mut Connection, since: Instant) -> Option<Stop> {
        if self.on_replica() {
            let there = match connection::identity(con) {
                Ok(there) => there,
                Err(f) => return Some(f.into()),
            };
            if there.is_primary() || !there.link_up || there.replid != self.server.replid {
                // Usually the primary failed: the writer checks its connection.
                self.shared.suspect_primary();
            }
            if there.is_primary() || !there.link_up {
                return Some(Stop::Switch(match there.is_primary() {
                    true => "the replica was promoted".into(),
                    false => "the replica lost its link to the primary".into(),
                }));
            }
            if there.replid != self.server.replid {
                // A failover: the resume after this reconnect decides about a gap.
                return Some(Stop::Retry);
            }
        }
        let preferred = self.sources.iter().take(self.at).any(|s| s.replica);
        (preferred && since.elapsed() >= RETRY_PREFERRED_EVERY)
            .then(|| Stop::Switch("trying the preferred replicas again".into()))
    }

    /// A tail read counts on the primary always; on a replica only once the replica has
    /// received everything up to the primary's `last` of the latest tail check.
    fn count_tail_read(&mut self, replica: bool) {
        if replica {
            match self.tail_check {
                Some(TailCheck { covered: true, .. }) => self.tail_check = None,
                _ => return,
            }
        }
        self.shared.count_tail_read();
    }

    /// On a replica: when the loop waits for an id (`tail_wanted` grew), asks the primary
    /// for its `last`; then asks the replica for its own until it is as high. `true`
    /// while a check is under way (read with a short block).
    fn tail_check(&mut self, con: &mut Connection) -> Result<bool, Stop> {
        let wanted = self.shared.tail_wanted.load(Ordering::SeqCst);
        if wanted > self.tail_asked {
            self.tail_asked = wanted;
            let mut get = redis::cmd("GET");
            get.arg(&self.keys.last);
            let primary = self.primary_connection()?;
            let last = match connection::call(primary, &get) {
                Ok(v) => reply::optional_id(&v).map_err(protocol)?.unwrap_or(0),
                Err(f) => {
                    self.primary = None;
                    return Err(f.into());
                }
            };
            self.tail_check = Some(TailCheck {
                primary_last: last,
                covered: false,
            });
        }
        let Some(check) = self.tail_check.as_mut().filter(|c| !c.covered) else {
            return Ok(false);
        };
        let primary_last = check.primary_last;
        let mut get = redis::cmd("GET");
        get.arg(&self.keys.last);
        let here = reply::optional_id(&connection::call(con, &get)?)
            .map_err(protocol)?
            .unwrap_or(0);
        if (here >= primary_last || self.chain.last >= primary_last)
            && let Some(c) = self.tail_check.as_mut()
        {
            c.covered = true;
        }
        Ok(true)
    }

    /// The side connection to the primary (opened when first needed), checked to be one.
    fn primary_connection(&mut self) -> Result<&mut Connection, Stop> {
        if self.primary.is_none() {
            let primary = self.sources.last().ok_or(Stop::Lost("no primary".into()))?;
            let timeout = self.shared.options.connect_timeout;
            let mut con =
                connection::open(&primary.client, timeout, IO_TIMEOUT).map_err(Stop::Lost)?;
            if !connection::identity(&mut con)?.is_primary() {
                return Err(Stop::Lost("cluster.redis leads to a replica".into()));
            }
            self.primary = Some(con);
        }
        self.primary.as_mut().ok_or(Stop::Lost("no primary".into()))
    }

    /// With `min_replicas`, waits until that many replicas hold everything read so far
    /// (`PUBLISH` + `WAIT` on the primary), trying again while they do not: an entry a
    /// failover could still erase is not delivered. Reading from a replica counts as one.
    fn confirm(&mut self, con: &mut Connection) -> Result<(), Stop> {
        let n = self.shared.options.min_replicas;
        let replica = self.on_replica();
        if n == 0 || (replica && n == 1) {
            return Ok(());
        }
        let wait_ms = self.shared.options.replica_timeout.as_millis() as u64;
        let pipe = keys::confirm(&self.keys, n, wait_ms);
        loop {
            if self.shared.is_shutting_down() {
                return Err(Stop::Shutdown);
            }
            if self.shared.take_moved(Side::Reader) {
                return Err(Stop::Lost(
                    "the address leads to another server now (failover)".into(),
                ));
            }
            let target = match replica {
                true => self.primary_connection()?,
                false => &mut *con,
            };
            let answer: Result<Vec<Value>, _> = pipe.query(target);
            let counted = match answer {
                Ok(v) => match v.first() {
                    Some(Value::Int(k)) => *k,
                    _ => return Err(protocol("WAIT gave no count".into())),
                },
                Err(e) => {
                    if replica {
                        self.primary = None;
                    }
                    return Err(pipeline_stop(e));
                }
            };
            if counted >= i64::from(n) {
                if self.unconfirmed > 0 {
                    log::info!("cluster: reader: {n} replicas hold what was read; delivering");
                }
                self.unconfirmed = 0;
                return Ok(());
            }
            if self.unconfirmed == 0 {
                log::warn!(
                    "cluster: reader: only {counted} of {n} replicas hold what was read; \
                     holding it back"
                );
            }
            self.unconfirmed += 1;
        }
    }

    fn read(&self, con: &mut Connection, block: Duration) -> Result<Vec<RawEntry>, Stop> {
        let mut cmd: Cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(PAGE)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
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

/// A replica is used only while it follows a primary with a working link and holds the
/// data set's epoch (a replica that has not synced yet holds none; nor does one of an
/// empty data set, until the epoch's creation on the primary reaches it).
fn replica_in_sync(con: &mut Connection, keys: &Keys) -> Result<bool, String> {
    let there = connection::identity(con).map_err(Failure::into_reason)?;
    if there.is_primary() {
        return Err("it is a primary".into());
    }
    if !there.link_up {
        return Err("its link to the primary is down".into());
    }
    let mut exists = redis::cmd("EXISTS");
    exists.arg(&keys.epoch);
    match connection::call(con, &exists).map_err(Failure::into_reason)? {
        Value::Int(1) => Ok(true),
        _ => Ok(false),
    }
}

fn pipeline_stop(e: redis::RedisError) -> Stop {
    match connection::interrupted(&e) {
        true => Stop::Interrupted,
        false => Stop::Lost(connection::reason(&e)),
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
