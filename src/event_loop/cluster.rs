//! The loop's side of cluster mode (protocol 7): what the link to Redis reports is applied
//! here — producers' answers released, entries read back from the stream committed and
//! fanned out (the only way an event reaches history or a stream in cluster mode), a gap
//! turned into forgotten history and streams told to come back, up/down logged — and
//! resumes from an id this node has not read yet wait for the reader (`cluster.catch_up`).

use super::*;
use crate::cluster::{self, Entry, Link, Report};
use crate::commit::FromRedis;
use crate::http::route::CatchUp;

/// A stream request waiting for the node's reader: its resume id `until` is above the
/// node's last id (`u64::MAX`: the node has not read Redis yet). Routed again once the node
/// has read up to `until`, or to the end of the stream after it was parked (`tail_reads`
/// grew: the id is not coming), or at `deadline` (then told to come back).
pub(super) struct Parked {
    pub key: u32,
    pub request: Request,
    pub until: u64,
    pub deadline: Millis,
    /// `Link::tail_reads` when it was parked.
    pub tail_reads: u64,
}

/// Starts the link's threads with what they need from the configuration.
pub(super) fn cluster_link(config: &Config, waker: Arc<Waker>) -> io::Result<Link> {
    let c = &config.cluster;
    let options = cluster::Options {
        url: c.redis.clone(),
        key_prefix: c.key_prefix.clone(),
        min_replicas: c.min_replicas,
        replica_timeout: c.replica_timeout,
        connect_timeout: c.connect_timeout,
        max_age: config.history.max_age,
        max_stream_events: config.history.max_stream_events,
        read_from: c.read_from.clone(),
        read_linger: c.read_linger,
        write_linger: c.write_linger,
    };
    Link::start(options, waker)
}

impl Server {
    /// Applies everything the link reported since the last turn, in order.
    pub(super) fn poll_redis(&mut self) {
        let mut answered = false;
        // Before draining: a tail read counted now had its entries queued before it.
        if let Some(link) = self.commit.link() {
            self.tail_reads_seen = link.tail_reads();
        }
        while let Some(report) = self.commit.poll_remote() {
            match report {
                FromRedis::Answers(answers) => {
                    answered = true;
                    for a in answers {
                        let result = match &a.result {
                            Ok(id) => Ok(*id),
                            Err(reason) => Err(reason.as_str()),
                        };
                        if result.is_err() {
                            self.stats.ingest_errors += 1;
                        }
                        if let Some(answers) = self.answers_of(a.sender)
                            && answers.resolve(a.seq, result)
                        {
                            self.answers_due(a.sender);
                        }
                    }
                }
                FromRedis::Report(Report::Started {
                    remembers_from,
                    last_id,
                }) => {
                    info!("redis: history starts at id {remembers_from}, last id {last_id}");
                    self.hub.set_remembers_from(remembers_from);
                    self.hub.raise_last(last_id);
                    self.cluster_ready = true;
                }
                FromRedis::Report(Report::Entries(entries)) => self.commit_entries(&entries),
                FromRedis::Report(Report::Gap { forget_up_to, why }) => {
                    self.forget_after_gap(forget_up_to, &why);
                }
                FromRedis::Report(Report::Up) => {
                    info!("redis: up");
                    self.ops_status_changed();
                }
                FromRedis::Report(Report::Down(reason)) => {
                    warn!("redis: down: {reason}");
                    self.ops_status_changed();
                }
                FromRedis::Report(Report::Answered(_)) => {}
            }
        }
        // Producers not read while the outgoing queue was full: room again.
        if answered && self.commit.may_send() {
            self.producers_to_read.append(&mut self.producers_waiting);
            self.run_waiting_publishes();
        }
        self.resume_parked(false);
    }

    /// Entries read back from the stream: into history, then to their streams — on every
    /// node, the publishing one included, in stream order.
    fn commit_entries(&mut self, entries: &[Entry]) {
        let max_pending = self.config.streams.max_pending_bytes;
        for e in entries {
            let event = self.hub.recover(
                e.id,
                e.published_unix_ms,
                &e.topics,
                e.event.as_deref(),
                &e.data,
                e.is_final,
            );
            self.hub.commit(&event);
            self.stats.events_published += 1;
            self.streams
                .fan_out(&event, &self.hub, self.now, max_pending, &mut self.stats);
        }
    }

    /// This node may have missed events up to `forget_up_to`: resumes from below it get
    /// `reset`, and every live stream is told to come back (a `retry:` spread as at a
    /// graceful stop) so that its client resumes and learns it.
    fn forget_after_gap(&mut self, forget_up_to: u64, why: &str) {
        warn!(
            "redis: possible gap ({why}): history forgotten up to id {forget_up_to}, \
             streams told to reconnect"
        );
        // Not `raise_last`: entries up to `forget_up_to` may still arrive (and reach streams);
        // a resume from inside the gap gets `reset` through the forgotten mark.
        self.hub.note_forgotten(forget_up_to);
        let base = self.config.streams.retry_base.as_millis() as u64;
        let spread = self.config.streams.shutdown_spread.as_millis() as u64;
        for key in self.streams.keys() {
            let streaming = self.streams.get(key).is_some_and(|c| {
                c.is_streaming() && !c.has(flags::CLOSING | flags::CLOSE_AFTER_FLUSH)
            });
            if streaming {
                let retry = sse::retry(base + self.rng.below(spread + 1));
                self.streams.end_stream_with(key, retry, self.now);
            }
        }
    }

    /// Parks a stream request the node cannot decide yet (`Decision::CatchUp`).
    pub(super) fn park(&mut self, key: u32, request: Request, until: u64) {
        let deadline = self.now + self.config.cluster.catch_up.as_millis() as Millis;
        let tail_reads = self.commit.link().map_or(0, |link| {
            let counted = link.tail_reads();
            link.want_tail();
            counted
        });
        self.catching_up.push(Parked {
            key,
            request,
            until,
            deadline,
            tail_reads,
        });
    }

    pub(super) fn is_parked(&self, key: u32) -> bool {
        self.catching_up.iter().any(|p| p.key == key)
    }

    /// Routes again the parked requests that the node has caught up with, and (with
    /// `timers`) those whose wait is over, which are told to come back.
    pub(super) fn resume_parked(&mut self, timers: bool) {
        if self.catching_up.is_empty() {
            return;
        }
        let (ready, last, tail_reads, now) = (
            self.cluster_ready,
            self.hub.last_id(),
            self.tail_reads_seen,
            self.now,
        );
        let next = |p: &Parked| -> Option<CatchUp> {
            if ready && p.until == u64::MAX {
                // Ready now: a first look, as if it had just come.
                Some(CatchUp::MayWait { ready: true })
            } else if ready && (p.until <= last || tail_reads > p.tail_reads) {
                Some(CatchUp::Decide)
            } else if timers && p.deadline <= now {
                Some(CatchUp::GiveUp)
            } else {
                None
            }
        };
        let mut due = Vec::new();
        for p in std::mem::take(&mut self.catching_up) {
            match next(&p) {
                Some(how) => due.push((p, how)),
                None => self.catching_up.push(p),
            }
        }
        for (p, how) in due {
            if self.streams.get(p.key).is_some() {
                self.handle_request(p.key, p.request, how);
                self.process_requests(p.key);
            }
        }
    }

    /// The earliest end of a catch-up wait (for the poll timeout).
    pub(super) fn next_catch_up_deadline(&self) -> Option<Millis> {
        self.catching_up.iter().map(|p| p.deadline).min()
    }

    /// Parked requests of connections closed this turn are dropped (their keys may be
    /// reused by the next connection).
    pub(super) fn unpark_closing(&mut self) {
        if self.catching_up.is_empty() {
            return;
        }
        let closing = self.streams.closing();
        self.catching_up.retain(|p| !closing.contains(&p.key));
    }
}
