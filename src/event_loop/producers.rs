//! The producers' side of the loop: read each producer's lines (a budget per turn),
//! handle each in order — publish through the commit seam, an admin command, or an error
//! answer — close the turn's log batch, deliver what became committed, and write the held
//! answers once their batches are durable (or refused).

use super::*;
use crate::cluster::PublishRequest;
use crate::commit::Sender;
use crate::ingest::Flow;

impl Server {
    // ---- ingest --------------------------------------------------------------------------

    /// Reads what producer `key` sent (up to a budget per turn) and handles each complete
    /// line in order: publish, admin command or error. Whatever ends a read (no input
    /// left, the budget, answers piling up, a failed answer write, a reload), the lines
    /// handled so far close their log batch, their answers are written and their committed
    /// events reach the streams before anything else happens: no stream starts and no
    /// reload applies between an event's commit and its fan-out. A reload holds the lines
    /// after it until it is applied, its re-check of open streams included.
    pub(super) fn read_producer(&mut self, key: usize) {
        let mut budget = INGEST_READ_PER_TURN;
        loop {
            let ended = self.read_lines(key, &mut budget);
            self.end_batch(Sender::Producer(key));
            // The producer's answers first, then the events reach the streams' queues: on
            // a hub with many subscribers the answer does not wait for the fan-out.
            match ended {
                ReadEnd::WriteFailed => self.close_producer(key),
                ReadEnd::Done | ReadEnd::Reload => self.flush_producer(key),
            }
            self.fan_out_committed();
            if ended != ReadEnd::Reload {
                return;
            }
            self.apply_reload();
        }
    }

    /// Reads and handles producer `key`'s lines until its input, its read budget or its
    /// room for answers runs out, an answer write fails, or a reload line was answered.
    fn read_lines(&mut self, key: usize, budget: &mut usize) -> ReadEnd {
        let max_topics = self.config.streams.max_topics;
        let max_line = self.config.ingest.max_event_bytes;
        let wall_us = self.wall_us;
        // Cluster mode: the outgoing queue to Redis is full (`commit::MAX_IN_FLIGHT`).
        let queue_full = std::cell::Cell::new(!self.commit.may_send());
        // A reload was answered: the lines after it wait until it is applied.
        let reloading = std::cell::Cell::new(false);
        // Each line is handled here with the parts it may touch (disjoint fields).
        let (hub, commit, to_fan_out, stats) = (
            &mut self.hub,
            &mut self.commit,
            &mut self.to_fan_out,
            &mut self.stats,
        );
        let (ops, config) = (&mut self.ops, &self.config);
        let mut on_line = |input: InputLine<'_>, answers: &mut Answers| {
            match input.decode(max_line, max_topics) {
                Ok(Line::Blank) => {}
                Ok(Line::Publish(p)) => {
                    let at = Publishing {
                        wall_us,
                        sender: Sender::Producer(key),
                    };
                    publish(p, at, hub, commit, to_fan_out, stats, answers);
                    queue_full.set(!commit.may_send());
                }
                Ok(Line::Admin(line::Admin::Reload)) => match ops.request_reload(config) {
                    Ok(answer) => {
                        answers.raw(&answer);
                        reloading.set(true);
                        return Flow::Pause;
                    }
                    Err(reason) => answers.error(&reason),
                },
                Err(e) => {
                    stats.ingest_errors += 1;
                    answers.error(&e.0);
                }
            }
            Flow::Next
        };
        loop {
            let Some(p) = self.producers.get_mut(key) else {
                return ReadEnd::Done;
            };
            if !p.may_read() && !p.eof {
                // Answers piled up: write some before reading more.
                if let Err(e) = p.flush_answers() {
                    debug!("producer write failed: {e}");
                    return ReadEnd::WriteFailed;
                }
            }
            if !p.may_read() {
                break;
            }
            if queue_full.get() {
                // Cluster mode: the outgoing queue to Redis is full; read on once answers
                // come back (`poll_redis`).
                self.producers_waiting.push(key);
                break;
            }
            if p.has_held() {
                // The lines that waited behind a reload, now applied.
                p.take_held(max_line, &mut on_line);
            } else {
                if *budget == 0 {
                    self.producers_to_read.push(key);
                    break;
                }
                match p.sock.read(&mut self.scratch) {
                    Ok(0) => {
                        p.eof = true;
                        p.finish_input(max_line, &mut on_line);
                        break;
                    }
                    Ok(n) => {
                        *budget = budget.saturating_sub(n);
                        p.take_input(&self.scratch[..n], max_line, &mut on_line);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        debug!("producer read failed: {e}");
                        p.eof = true;
                        break;
                    }
                }
            }
            if reloading.get() {
                return ReadEnd::Reload;
            }
        }
        match reloading.get() {
            true => ReadEnd::Reload,
            false => ReadEnd::Done,
        }
    }

    /// Queues the events committed since the last call on their streams, in commit order.
    ///
    /// Between an event's commit and this call only the same read's publishes and answers
    /// happen (`read_producer`): no stream starts. Later publishes may still evict the
    /// event and forget its quiet topics, and a forgotten topic's slot may be reused by a
    /// topic made meanwhile; the event names its topics with their generation
    /// (`TopicRef`), so its fan-out finds no subscriber in a reused slot (`Hub::subscribers`).
    pub(super) fn fan_out_committed(&mut self) {
        let max_pending = self.config.streams.max_pending_bytes;
        let mut events = std::mem::take(&mut self.to_fan_out);
        for event in events.drain(..) {
            self.streams
                .fan_out(&event, &self.hub, self.now, max_pending, &mut self.stats);
        }
        // Keep the vector's capacity for the next turn.
        if self.to_fan_out.is_empty() {
            self.to_fan_out = events;
        }
    }

    /// Closes the log batch of the lines just handled for `sender` (a producer's read, or
    /// a `POST /publish` body). With `os` durability it is durable at once; with `fsync`
    /// once the helper thread's sync reports back (`poll_commit`). Until then its answers
    /// wait and its events reach no stream.
    pub(super) fn end_batch(&mut self, sender: Sender) {
        let durable = self.commit.durable();
        match self.commit.end_batch() {
            BatchEnd::Empty => {
                if let Some(answers) = self.answers_of(sender) {
                    answers.batch_written(None);
                    answers.release(durable);
                }
            }
            BatchEnd::Written(seq) => {
                self.log_failing = None;
                if let Some(answers) = self.answers_of(sender) {
                    answers.batch_written(Some(seq));
                }
                self.deliver_committed();
            }
            BatchEnd::Failed { reason, refused } => {
                warn!("log write failed, events refused: {reason}");
                self.log_failing = Some(reason.clone());
                if let Some(answers) = self.answers_of(sender) {
                    answers.refuse_unwritten(&reason);
                    answers.release(durable);
                }
                for event in &refused {
                    self.hub.abandon(event);
                }
            }
        }
    }

    /// The answers `sender` waits for, if it is still there.
    pub(super) fn answers_of(&mut self, sender: Sender) -> Option<&mut Answers> {
        match sender {
            Sender::Producer(key) => self.producers.get_mut(key).map(|p| &mut p.answers),
            Sender::Http(key) => match self.streams.get_mut(key).map(|c| &mut c.state) {
                Some(ConnState::Publishing(p)) => Some(&mut p.answers),
                _ => None,
            },
        }
    }

    /// Writes what became due to `sender`: a producer's answer lines, or a publish's
    /// HTTP answer once every line is answered.
    pub(super) fn answers_due(&mut self, sender: Sender) {
        match sender {
            Sender::Producer(key) => self.flush_producer(key),
            Sender::Http(key) => self.finish_publish(key),
        }
    }

    /// Events whose batch became durable enter history and reach their streams; their
    /// producers get their `ok`.
    pub(super) fn deliver_committed(&mut self) {
        for event in self.commit.take_committed() {
            self.hub.commit(&event);
            self.stats.events_published += 1;
            self.to_fan_out.push(event);
        }
        self.release_answers(|a, durable| a.release(durable));
        self.fan_out_committed();
    }

    /// Applies `f` to every producer's and `POST /publish`'s held answers and writes what
    /// became due.
    pub(super) fn release_answers(&mut self, mut f: impl FnMut(&mut Answers, u64)) {
        let durable = self.commit.durable();
        let mut senders: Vec<Sender> = self
            .producers
            .iter()
            .filter(|(_, p)| p.answers.held() > 0)
            .map(|(k, _)| Sender::Producer(k))
            .collect();
        senders.extend(self.publishing.iter().map(|&k| Sender::Http(k)));
        for sender in senders {
            if let Some(answers) = self.answers_of(sender) {
                f(answers, durable);
            }
            self.answers_due(sender);
        }
    }

    /// Collects what the log's helper thread reported: finished syncs commit their
    /// batches; a failed sync refuses every batch it should have covered.
    pub(super) fn poll_commit(&mut self) {
        while let Some(report) = self.commit.poll() {
            match report {
                Synced::Durable => self.deliver_committed(),
                Synced::Failed {
                    reason,
                    failed,
                    was_durable,
                    refused,
                } => {
                    error!("log sync failed, unsynced events refused: {reason}");
                    self.log_failing = Some(reason.clone());
                    for event in &refused {
                        self.hub.abandon(event);
                    }
                    self.release_answers(|a, _| a.fail(was_durable, failed, &reason));
                }
            }
        }
        if let Some(e) = self.commit.take_background_error() {
            warn!("log: {e}");
        }
    }

    pub(super) fn producer_writable(&mut self, key: usize) {
        if self.producers.contains(key) {
            self.flush_producer(key);
        }
    }

    /// Writes a producer's answers; resumes reading it once they drain, closes it at EOF.
    pub(super) fn flush_producer(&mut self, key: usize) {
        let Some(p) = self.producers.get_mut(key) else {
            return;
        };
        let could_read = p.may_read();
        let (ok, errors) = p.answers.take_counts();
        self.stats.publishes.socket_ok += ok;
        self.stats.publishes.socket_error += errors;
        if let Err(e) = p.flush_answers() {
            debug!("producer write failed: {e}");
            return self.close_producer(key);
        }
        if p.eof && p.drained() {
            return self.close_producer(key);
        }
        if !could_read && p.may_read() {
            self.producers_to_read.push(key);
        }
    }

    pub(super) fn read_producers_left_over(&mut self) {
        let keys = std::mem::take(&mut self.producers_to_read);
        for key in keys {
            self.read_producer(key);
        }
    }

    pub(super) fn close_producer(&mut self, key: usize) {
        if let Some(mut p) = self.producers.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut p.sock);
        }
    }
}

/// Why `read_lines` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// Input, budget or room for answers ran out (or the producer is gone).
    Done,
    /// Writing the producer's answers failed: close it (after its batch is handled).
    WriteFailed,
    /// A reload was answered: apply it, then handle the lines after it.
    Reload,
}

/// The turn's wall clock and who is publishing, for `publish`.
#[derive(Clone, Copy)]
pub(super) struct Publishing {
    pub wall_us: u64,
    pub sender: Sender,
}

/// The ingest data path of one publish line: accept (final marks, id, encode once) →
/// submit to the commit seam → committed now (memory: retain, answer `ok`, listed for the
/// fan-out that follows the producer's answers) or
/// held until durable (the answer waits for its batch). In cluster mode the line goes to
/// Redis instead, which assigns the id; the answer waits for Redis's reply, and the event
/// reaches history and streams when the link reads it back (`poll_redis`).
pub(super) fn publish(
    p: Publish,
    at: Publishing,
    hub: &mut Hub,
    commit: &mut Commit,
    to_fan_out: &mut Vec<std::rc::Rc<crate::history::Event>>,
    stats: &mut Stats,
    answers: &mut Answers,
) {
    if commit.is_remote() {
        let request = PublishRequest {
            topics: p.topics,
            event: p.event,
            data: p.data,
            is_final: p.is_final,
            key: p.key,
        };
        if let Some(seq) = commit.send(request, at.sender) {
            answers.remote(seq);
        }
        return;
    }
    if p.key.is_some() {
        stats.ingest_errors += 1;
        return answers.error("\"key\" needs cluster mode (cluster.redis)");
    }
    let p = &p;
    let event = match hub.accept(p, at.wall_us / 1000, at.wall_us) {
        Ok(event) => event,
        Err(reason) => {
            stats.ingest_errors += 1;
            return answers.error(&reason);
        }
    };
    let record = RecordRef {
        id: event.id,
        published_unix_ms: event.published_at,
        is_final: event.is_final,
        topics: &p.topics,
        event: p.event.as_deref(),
        data: &p.data,
    };
    match commit.submit(event.clone(), &record) {
        Submitted::Held => answers.ok(event.id, Some(BATCH_UNWRITTEN)),
        Submitted::Now => {
            hub.commit(&event);
            stats.events_published += 1;
            answers.ok(event.id, None);
            to_fan_out.push(event);
        }
    }
}
