//! The commit seam: where an accepted event becomes committed — retained in history,
//! deliverable to streams, and answered `ok` to its producer (protocol 3.2).
//!
//! - Memory only: an event is committed the moment it is submitted.
//! - With the on-disk log (`history.data_dir`): an event is appended to the log's batch;
//!   the batch is written when the producer's input of this turn is read (`end_batch`);
//!   it is committed once the batch is durable — at once in `os` mode, when the helper
//!   thread's fsync reports back in `fsync` mode (many batches share one sync) — and
//!   refused when the write or the sync fails.
//!
//! - Redis (cluster mode, protocol 7): an event is not accepted here at all. Its publish is
//!   `send`t to Redis, which assigns the id; the producer's answer comes back later
//!   (`poll_remote`, `FromRedis::Answers`), and the event is committed only when the
//!   link's reader reads it back from the stream (`Report::Entries`), on every node alike.
//!
//! The loop submits accepted events and batch ends; it gets back committed events (to
//! retain and fan out, in id order) and what happened to each batch (for the producers'
//! held answers, `ingest::Answers`).

use crate::cluster::{Link, PublishRequest, Report};
use crate::config::Durability;
use crate::history::Event;
use crate::ingest::BATCH_UNWRITTEN;
use crate::log::{Log, RecordRef};
use std::collections::VecDeque;
use std::rc::Rc;

pub struct Commit {
    /// The on-disk log; None: memory only.
    log: Option<Log>,
    durability: Durability,
    /// Highest log batch known durable or refused: answers and deliveries up to it are due.
    durable: u64,
    /// Submitted events whose batch is not durable yet, in id order, with their batch
    /// (`BATCH_UNWRITTEN` until the batch is written).
    unsynced: VecDeque<(u64, Rc<Event>)>,
    /// Batches were written since the last sync request (`fsync` mode).
    sync_wanted: bool,
    /// Cluster mode: the link to Redis and who sent each unanswered publish.
    remote: Option<Remote>,
}

/// Publishes sent to Redis and not answered yet, at most: past this the loop stops reading
/// producers until answers come back (a full queue slows producers; protocol 7).
pub const MAX_IN_FLIGHT: usize = 65_536;

struct Remote {
    link: Link,
    /// (publish sequence number, who sent it), in sending order.
    senders: VecDeque<(u64, Sender)>,
}

/// Who sent a publish and waits for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A producer on the ingest socket (its key).
    Producer(usize),
    /// A `POST /publish` on an HTTP connection (its key).
    Http(u32),
}

/// What came back from Redis (`poll_remote`).
#[derive(Debug)]
pub enum FromRedis {
    /// Answers to sent publishes, in sending order, with the producer that sent each.
    Answers(Vec<RemoteAnswer>),
    /// Anything else the link reported (entries to commit, a gap, up or down).
    Report(Report),
}

#[derive(Debug)]
pub struct RemoteAnswer {
    pub sender: Sender,
    pub seq: u64,
    pub result: Result<u64, String>,
}

/// What `submit` did with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Committed now (memory only): retain it, fan it out and answer `ok` at once.
    Now,
    /// Held until its batch is durable: its answer waits for batch `BATCH_UNWRITTEN`.
    Held,
}

/// What happened to the batch that `end_batch` closed.
#[derive(Debug)]
pub enum BatchEnd {
    /// Nothing was appended since the last batch (or memory only).
    Empty,
    /// Written as batch `seq`; with `os` durability it is durable already (see
    /// `take_committed`).
    Written(u64),
    /// The write failed: every event of the batch is refused (`refused`, to undo their
    /// final marks) with `reason`.
    Failed {
        reason: String,
        refused: Vec<Rc<Event>>,
    },
}

/// What the log's helper thread reported (`poll`).
#[derive(Debug)]
pub enum Synced {
    /// Every batch up to the durable mark is durable: see `take_committed`.
    Durable,
    /// A sync failed: every batch up to `failed` that was not durable is refused
    /// (`refused` events, to undo their final marks) with `reason`.
    Failed {
        reason: String,
        failed: u64,
        /// The durable mark before the failure: answers of batches up to it stay `ok`.
        was_durable: u64,
        refused: Vec<Rc<Event>>,
    },
}

impl Commit {
    pub fn memory() -> Commit {
        Commit::new(None, Durability::Os)
    }

    pub fn new(log: Option<Log>, durability: Durability) -> Commit {
        Commit {
            log,
            durability,
            durable: 0,
            unsynced: VecDeque::new(),
            sync_wanted: false,
            remote: None,
        }
    }

    /// Cluster mode: every publish goes through `link`.
    pub fn remote(link: Link) -> Commit {
        Commit {
            remote: Some(Remote {
                link,
                senders: VecDeque::new(),
            }),
            ..Commit::memory()
        }
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The link to Redis (cluster mode).
    pub fn link(&self) -> Option<&Link> {
        self.remote.as_ref().map(|r| &r.link)
    }

    /// Whether another publish may be sent (cluster mode: fewer than `MAX_IN_FLIGHT` wait).
    pub fn may_send(&self) -> bool {
        self.remote
            .as_ref()
            .is_none_or(|r| r.senders.len() < MAX_IN_FLIGHT)
    }

    /// Cluster mode: sends a publish of `producer` to Redis; returns its sequence number
    /// (the producer's answer waits for it: `Answers::remote`). None: not in cluster mode.
    pub fn send(&mut self, request: PublishRequest, sender: Sender) -> Option<u64> {
        let r = self.remote.as_mut()?;
        let seq = r.link.submit(request);
        r.senders.push_back((seq, sender));
        Some(seq)
    }

    /// The next report of the link to Redis, if any (call until None after a wake-up).
    pub fn poll_remote(&mut self) -> Option<FromRedis> {
        let r = self.remote.as_mut()?;
        Some(match r.link.poll()? {
            Report::Answered(answered) => {
                let mut answers = Vec::with_capacity(answered.len());
                for (seq, result) in answered {
                    // Answers come in sending order; anything before `seq` was answered.
                    while r.senders.front().is_some_and(|&(s, _)| s < seq) {
                        r.senders.pop_front();
                    }
                    if let Some(&(s, sender)) = r.senders.front()
                        && s == seq
                    {
                        r.senders.pop_front();
                        answers.push(RemoteAnswer {
                            sender,
                            seq,
                            result,
                        });
                    }
                }
                FromRedis::Answers(answers)
            }
            other => FromRedis::Report(other),
        })
    }

    /// Highest log batch durable or refused (0: none; always 0 in memory).
    pub fn durable(&self) -> u64 {
        self.durable
    }

    pub fn log_mut(&mut self) -> Option<&mut Log> {
        self.log.as_mut()
    }

    /// Submits an accepted event (`record`: the same event for the log).
    pub fn submit(&mut self, event: Rc<Event>, record: &RecordRef<'_>) -> Submitted {
        let Some(log) = &mut self.log else {
            return Submitted::Now;
        };
        log.append(record);
        self.unsynced.push_back((BATCH_UNWRITTEN, event));
        Submitted::Held
    }

    /// Closes the batch of what was submitted since the last call: writes it to the log.
    pub fn end_batch(&mut self) -> BatchEnd {
        let Some(log) = &mut self.log else {
            return BatchEnd::Empty;
        };
        if !log.has_buffered() {
            return BatchEnd::Empty;
        }
        match log.write_batch() {
            Ok(seq) => {
                for entry in self.unsynced.iter_mut().rev() {
                    if entry.0 != BATCH_UNWRITTEN {
                        break;
                    }
                    entry.0 = seq;
                }
                match self.durability {
                    Durability::Os => self.durable = self.durable.max(seq),
                    Durability::Fsync => self.sync_wanted = true,
                }
                BatchEnd::Written(seq)
            }
            Err(e) => {
                let mut refused = Vec::new();
                while self
                    .unsynced
                    .back()
                    .is_some_and(|(b, _)| *b == BATCH_UNWRITTEN)
                {
                    if let Some((_, event)) = self.unsynced.pop_back() {
                        refused.push(event);
                    }
                }
                refused.reverse();
                BatchEnd::Failed {
                    reason: format!("not stored: log write failed: {e}"),
                    refused,
                }
            }
        }
    }

    /// Once per turn, before sleeping: asks the helper thread for one sync covering every
    /// batch written since the last request (group commit).
    /// In cluster mode: hands this turn's publishes to the link's writer (one pipeline).
    pub fn request_sync(&mut self) {
        if let Some(r) = &mut self.remote {
            r.link.flush();
        }
        if std::mem::take(&mut self.sync_wanted)
            && let Some(log) = &mut self.log
        {
            log.request_sync();
        }
    }

    /// The next report of the log's helper thread, if any (call until None).
    pub fn poll(&mut self) -> Option<Synced> {
        let result = self.log.as_mut()?.poll_sync()?;
        Some(match result {
            Ok(seq) => {
                self.durable = self.durable.max(seq);
                Synced::Durable
            }
            Err(e) => {
                let failed = self.log.as_ref().map_or(0, Log::last_batch_seq);
                let mut refused = Vec::new();
                while self.unsynced.front().is_some_and(|(b, _)| *b <= failed) {
                    if let Some((_, event)) = self.unsynced.pop_front() {
                        refused.push(event);
                    }
                }
                let was_durable = self.durable;
                self.durable = self.durable.max(failed);
                Synced::Failed {
                    reason: format!("not stored: log sync failed: {e}"),
                    failed,
                    was_durable,
                    refused,
                }
            }
        })
    }

    /// A problem the helper thread met in the background (meta write, segment deletion).
    pub fn take_background_error(&mut self) -> Option<String> {
        self.log.as_mut()?.take_background_error()
    }

    /// Events whose batch is durable, in id order: retain them and fan them out.
    pub fn take_committed(&mut self) -> Vec<Rc<Event>> {
        let mut committed = Vec::new();
        while self
            .unsynced
            .front()
            .is_some_and(|(b, _)| *b != BATCH_UNWRITTEN && *b <= self.durable)
        {
            if let Some((_, event)) = self.unsynced.pop_front() {
                committed.push(event);
            }
        }
        committed
    }

    /// Deletes log segments past retention; returns the highest id the log has forgotten.
    pub fn enforce_retention(&mut self, now_unix_ms: u64) -> Option<u64> {
        let log = self.log.as_mut()?;
        log.enforce_retention(now_unix_ms);
        Some(log.forgotten_up_to())
    }

    /// Whether a sync was asked for and not yet requested (tests).
    #[cfg(test)]
    fn sync_pending(&self) -> bool {
        self.sync_wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{Producer, line};
    use crate::log::LogOptions;
    use mio::{Events, Poll, Token, Waker};
    use std::io::{ErrorKind, Read};
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn event(id: u64) -> Rc<Event> {
        Rc::new(Event::new(
            id,
            b"x".to_vec().into(),
            0,
            Box::new([crate::history::TopicRef {
                id: 0,
                generation: 0,
            }]),
            false,
        ))
    }

    fn record(id: u64, topics: &[Box<str>]) -> RecordRef<'_> {
        RecordRef {
            id,
            published_unix_ms: 0,
            is_final: false,
            topics,
            event: None,
            data: "x",
        }
    }

    fn log_commit(durability: Durability) -> (Commit, Poll, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let options = LogOptions {
            fsync: durability == Durability::Fsync,
            ..LogOptions::default()
        };
        let (log, _) = Log::open(dir.path(), options, waker, |_| {}).unwrap();
        (Commit::new(Some(log), durability), poll, dir)
    }

    #[test]
    fn memory_commits_at_once() {
        let mut c = Commit::memory();
        let topics: Vec<Box<str>> = vec!["t".into()];
        assert_eq!(c.submit(event(1), &record(1, &topics)), Submitted::Now);
        assert!(matches!(c.end_batch(), BatchEnd::Empty));
        assert!(c.take_committed().is_empty());
        assert!(c.poll().is_none());
    }

    #[test]
    fn os_durability_commits_when_the_batch_is_written() {
        let (mut c, _poll, _dir) = log_commit(Durability::Os);
        let topics: Vec<Box<str>> = vec!["t".into()];
        for id in [10, 11] {
            assert_eq!(c.submit(event(id), &record(id, &topics)), Submitted::Held);
        }
        assert!(
            c.take_committed().is_empty(),
            "nothing before the batch is written"
        );
        let BatchEnd::Written(seq) = c.end_batch() else {
            panic!("batch not written");
        };
        assert_eq!(c.durable(), seq);
        let ids: Vec<u64> = c.take_committed().iter().map(|e| e.id).collect();
        assert_eq!(ids, [10, 11]);
        assert!(
            matches!(c.end_batch(), BatchEnd::Empty),
            "no empty batch written"
        );
    }

    #[test]
    fn fsync_durability_commits_when_the_sync_reports_back() {
        let (mut c, _poll, _dir) = log_commit(Durability::Fsync);
        let topics: Vec<Box<str>> = vec!["t".into()];
        c.submit(event(20), &record(20, &topics));
        let BatchEnd::Written(first) = c.end_batch() else {
            panic!("batch not written");
        };
        c.submit(event(21), &record(21, &topics));
        let BatchEnd::Written(second) = c.end_batch() else {
            panic!("batch not written");
        };
        assert!(second > first);
        assert!(
            c.take_committed().is_empty(),
            "written is not durable in fsync mode"
        );
        assert!(c.sync_pending());
        c.request_sync();
        // One sync covers both batches (group commit).
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.durable() < second {
            match c.poll() {
                Some(Synced::Durable) => {}
                Some(other) => panic!("{other:?}"),
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                None => panic!("no sync reported"),
            }
        }
        let ids: Vec<u64> = c.take_committed().iter().map(|e| e.id).collect();
        assert_eq!(ids, [20, 21]);
    }

    /// A producer over a real socket pair; what it is answered arrives at the other end.
    fn producer() -> (Producer, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        (Producer::new(mio::net::UnixStream::from_std(ours)), theirs)
    }

    /// Writes the producer's due answers and returns what its peer receives.
    fn answered(p: &mut Producer, peer: &mut UnixStream) -> String {
        p.flush_answers().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match peer.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        String::from_utf8(got).unwrap()
    }

    fn ok_line(id: u64) -> String {
        let mut out = Vec::new();
        line::write_ok(&mut out, id);
        String::from_utf8(out).unwrap()
    }

    fn error_line(reason: &str) -> String {
        let mut out = Vec::new();
        line::write_error(&mut out, reason);
        String::from_utf8(out).unwrap()
    }

    /// Submits `id` as the loop's publish path does: held answer until its batch is durable.
    fn submit(c: &mut Commit, p: &mut Producer, id: u64, topics: &[Box<str>]) {
        assert_eq!(c.submit(event(id), &record(id, topics)), Submitted::Held);
        p.answers.ok(id, Some(BATCH_UNWRITTEN));
    }

    /// Ends the batch as the loop does and returns its sequence number.
    fn end_written(c: &mut Commit, p: &mut Producer) -> u64 {
        let BatchEnd::Written(seq) = c.end_batch() else {
            panic!("batch not written");
        };
        p.answers.batch_written(Some(seq));
        p.answers.release(c.durable());
        seq
    }

    fn committed_ids(c: &mut Commit) -> Vec<u64> {
        c.take_committed().iter().map(|e| e.id).collect()
    }

    /// Waits on the log's waker (no sleeping) for the helper thread's next sync report.
    fn next_report(c: &mut Commit, poll: &mut Poll) -> Synced {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events = Events::with_capacity(4);
        loop {
            if let Some(report) = c.poll() {
                return report;
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("no sync reported");
            poll.poll(&mut events, Some(left)).unwrap();
        }
    }

    #[test]
    fn group_commit_holds_ok_until_the_sync_that_covers_both_batches() {
        let (mut c, mut poll, _dir) = log_commit(Durability::Fsync);
        let (mut p, mut peer) = producer();
        let topics: Vec<Box<str>> = vec!["t".into()];
        submit(&mut c, &mut p, 20, &topics);
        let first = end_written(&mut c, &mut p);
        submit(&mut c, &mut p, 21, &topics);
        let second = end_written(&mut c, &mut p);
        assert_eq!(second, first + 1);
        assert_eq!(answered(&mut p, &mut peer), "", "written is not durable");
        assert!(committed_ids(&mut c).is_empty());
        assert_eq!(p.answers.held(), 2);

        c.request_sync();
        // Written after the sync was asked for: not covered by it.
        submit(&mut c, &mut p, 22, &topics);
        let third = end_written(&mut c, &mut p);

        assert!(matches!(next_report(&mut c, &mut poll), Synced::Durable));
        assert_eq!(c.durable(), second, "one sync made both batches durable");
        assert_eq!(committed_ids(&mut c), [20, 21]);
        p.answers.release(c.durable());
        assert_eq!(
            answered(&mut p, &mut peer),
            ok_line(20) + &ok_line(21),
            "released only now, in order"
        );
        assert_eq!(p.answers.held(), 1, "22 waits for the next sync");

        c.request_sync();
        assert!(matches!(next_report(&mut c, &mut poll), Synced::Durable));
        assert_eq!(c.durable(), third);
        assert_eq!(committed_ids(&mut c), [22]);
        p.answers.release(c.durable());
        assert_eq!(answered(&mut p, &mut peer), ok_line(22));
        assert_eq!(p.answers.held(), 0);
    }

    /// An I/O failure of the write cannot be injected from here (the log's write fault
    /// hook is private to `log`); a record the log cannot store (no topic; ingest never
    /// sends one) makes `write_batch` fail the same way, refusing the whole batch.
    #[test]
    fn a_failed_write_refuses_the_batch_behind_earlier_answers() {
        let (mut c, mut poll, _dir) = log_commit(Durability::Fsync);
        let (mut p, mut peer) = producer();
        let topics: Vec<Box<str>> = vec!["t".into()];
        submit(&mut c, &mut p, 30, &topics);
        let first = end_written(&mut c, &mut p);

        submit(&mut c, &mut p, 31, &topics);
        submit(&mut c, &mut p, 32, &[]);
        let BatchEnd::Failed { reason, refused } = c.end_batch() else {
            panic!("a batch holding an unstorable record was written");
        };
        assert!(
            reason.starts_with("not stored: log write failed: "),
            "{reason}"
        );
        let refused: Vec<u64> = refused.iter().map(|e| e.id).collect();
        assert_eq!(refused, [31, 32]);
        p.answers.refuse_unwritten(&reason);
        p.answers.release(c.durable());
        assert_eq!(answered(&mut p, &mut peer), "", "30 is not durable yet");

        c.request_sync();
        assert!(matches!(next_report(&mut c, &mut poll), Synced::Durable));
        assert_eq!(c.durable(), first);
        assert_eq!(
            committed_ids(&mut c),
            [30],
            "refused events are never committed"
        );
        p.answers.release(c.durable());
        assert_eq!(
            answered(&mut p, &mut peer),
            ok_line(30) + &error_line(&reason) + &error_line(&reason)
        );

        // The failure used no batch number; the next batch is written normally.
        submit(&mut c, &mut p, 33, &topics);
        assert_eq!(end_written(&mut c, &mut p), first + 1);
    }
}
