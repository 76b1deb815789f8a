//! The publish path behind one boundary (protocol 7): accept an event (check final marks,
//! assign an id, encode once), commit it to history once durable, and plan resumes (what
//! a reconnecting client is owed, or that it must be told `reset`). Owns topics, history
//! and the id sequence; never touches sockets, so another backend can replace it later.

use crate::history::{Event, IdSequence, Limits, Retained, Timeline, TopicId, TopicRef};
use crate::ingest::line::Publish;
use crate::pubsub::Topics;
use crate::sse;
use std::rc::Rc;

pub struct Hub {
    /// Crate-visible for tests; the loop goes through the methods below.
    pub(crate) topics: Topics,
    timeline: Timeline,
    ids: IdSequence,
    limits: Limits,
    /// Ids below this predate what the hub remembers: the first id ever issued with the
    /// data directory, or this process's start in Unix µs without one.
    remembers_from: u64,
    /// Highest id of any event whose topic metadata (or log segment) has been forgotten:
    /// a topic created from now on cannot prove a resume from below it complete (it may be
    /// the same name as a forgotten one), so it starts with this as its evicted id.
    forgotten_up_to: u64,
}

/// What a stream request is owed (protocol 2.2, 2.4).
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// Every requested topic is final and the client has seen each final event: `204`.
    Finished,
    /// Stream: send `reset` first when `reset` is set, then replay retained events with an
    /// id above `cursor`, then live.
    Stream {
        cursor: u64,
        reset: Option<Reset>,
        replay: bool,
    },
}

/// What one `Hub::prune` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Events evicted by age.
    pub evicted: usize,
    /// The budget ran out with more to evict: prune again soon.
    pub more: bool,
}

/// What `/topics/NAME` tells of a topic (protocol 5): this node's view.
#[derive(Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// Streams on this node subscribed to it.
    pub subscribers: usize,
    /// Events in its history.
    pub retained: usize,
    /// Its last event's id (0: none yet).
    pub last_id: u64,
    pub is_final: bool,
}

impl TopicInfo {
    /// `{"topic":…,"subscribers":…,"retained":…,"last_id":…,"final":…}`; `last_id` is a
    /// string like every id in answers, `null` before the first event. Topic names need no
    /// JSON escaping (their alphabet has no `"` or `\\`).
    pub fn json(&self, name: &str) -> String {
        let last = match self.last_id {
            0 => "null".to_string(),
            id => format!("\"{id}\""),
        };
        format!(
            "{{\"topic\":\"{name}\",\"subscribers\":{},\"retained\":{},\"last_id\":{last},\"final\":{}}}\n",
            self.subscribers, self.retained, self.is_final
        )
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Reset {
    /// The oldest retained id on the requested topics.
    pub earliest_id: Option<u64>,
}

impl Hub {
    pub fn new(limits: Limits, last_issued: u64, remembers_from: u64) -> Self {
        Hub {
            topics: Topics::default(),
            timeline: Timeline::default(),
            ids: IdSequence::new(last_issued),
            limits,
            remembers_from,
            forgotten_up_to: 0,
        }
    }

    pub fn last_id(&self) -> u64 {
        self.ids.last()
    }

    pub fn retained_events(&self) -> usize {
        self.timeline.len()
    }

    /// What `history.max_bytes` caps: retained events (`Event::cost`) and the metadata of
    /// topics kept for their history (those without a subscriber).
    pub fn retained_bytes(&self) -> usize {
        self.timeline.bytes() + self.topics.kept_bytes()
    }

    /// The metadata of topics streams hold: not in `history.max_bytes` (a stream's names
    /// must never push out anyone's history), bounded by open streams ×
    /// `streams.max_topics` names of at most 200 bytes.
    pub fn subscribed_topic_bytes(&self) -> usize {
        self.topics.subscribed_bytes()
    }

    pub fn set_remembers_from(&mut self, id: u64) {
        self.remembers_from = id;
    }

    /// Ids up to `id` may be gone for any topic (log recovery cut damaged records, or
    /// segments older than the retained ones are gone): a resume from below it, on any
    /// topic, known now or created later, gets `reset`.
    pub fn note_forgotten(&mut self, id: u64) {
        self.forgotten_up_to = self.forgotten_up_to.max(id);
        for t in self.topics.ids() {
            let h = &mut self.topics.get_mut(t).history;
            h.evicted_up_to = h.evicted_up_to.max(id);
        }
    }

    /// The log deleted segments up to `id` while running. Topics in memory keep what they
    /// know; only a topic created later (its past may be in those segments) is affected.
    pub fn note_log_trimmed(&mut self, id: u64) {
        self.forgotten_up_to = self.forgotten_up_to.max(id);
    }

    /// `/topics/NAME`: what this node knows of the topic `name`, `None` when it knows none.
    pub fn topic_info(&self, name: &str) -> Option<TopicInfo> {
        Some(self.info_of(self.topics.lookup(name)?))
    }

    fn info_of(&self, t: TopicId) -> TopicInfo {
        let topic = self.topics.get(t);
        TopicInfo {
            subscribers: topic.subscribers.len(),
            retained: topic.history.len(),
            last_id: topic.history.last_id,
            is_final: topic.history.is_final(),
        }
    }

    /// `/topics`: up to `limit` topics named `prefix…` after the name `after`, in name
    /// order, as one JSON object `{"topics":[…],"next":NAME|null}` (`next`: the cursor of
    /// the following page, `null` on the last). O(log topics + limit).
    pub fn topics_json(&self, prefix: &str, after: Option<&str>, limit: usize) -> String {
        // One more than asked: whether a next page exists.
        let ids = self.topics.page(prefix, after, limit + 1);
        let more = ids.len() > limit;
        let mut out = String::from("{\"topics\":[");
        let mut last = None;
        for (i, &t) in ids.iter().take(limit).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let name = &self.topics.get(t).name;
            out.push_str(self.info_of(t).json(name).trim_end());
            last = Some(name);
        }
        out.push_str("],\"next\":");
        match last.filter(|_| more) {
            Some(name) => {
                out.push('"');
                out.push_str(name);
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push_str("}\n");
        out
    }

    /// Topics known (with history, metadata or subscribers).
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    pub fn topic_name(&self, t: TopicId) -> &str {
        &self.topics.get(t).name
    }

    /// The streams subscribed to the topic an event names; none when that topic was
    /// forgotten, even if its slot holds another topic by now (an event's fan-out can come
    /// after later publishes evicted it and forgot its quiet topics).
    pub fn subscribers(&self, t: TopicRef) -> impl Iterator<Item = u32> + '_ {
        self.topics
            .resolve(t)
            .into_iter()
            .flat_map(|topic| topic.subscribers.iter().copied())
    }

    pub fn subscribe(&mut self, t: TopicId, conn: u32) {
        self.topics.subscribe(t, conn);
    }

    /// Unsubscribes; a topic left with no subscriber is forgotten when it has no past, or
    /// when it is quiet (its events all evicted while streams held it): from then on only
    /// history keeps topics, and history's metadata is bounded by `history.max_bytes`.
    pub fn unsubscribe(&mut self, t: TopicId, conn: u32) {
        self.topics.unsubscribe(t, conn);
        if self.topics.try_get(t).is_some_and(is_quiet) {
            self.forget_topic(t);
        }
    }

    /// The topic named `name`, created when first used (see `forgotten_up_to`).
    pub fn intern(&mut self, name: &str) -> TopicId {
        self.topics.intern(name, self.forgotten_up_to)
    }

    /// Forgets a topic's metadata; resumes on a topic of that name created later cannot be
    /// proven complete below its last id.
    fn forget_topic(&mut self, t: TopicId) {
        let h = &self.topics.get(t).history;
        self.forgotten_up_to = self.forgotten_up_to.max(h.last_id.max(h.evicted_up_to));
        self.topics.forget(t);
    }

    /// Evicts the oldest retained event, and with it the metadata of each of its topics
    /// that is now quiet: no event left (nor one accepted and not yet committed: its
    /// `TopicId` must stay valid), no subscriber, no final mark to keep.
    fn evict_oldest(&mut self) -> bool {
        let Some(event) = self.timeline.evict_oldest(&mut self.topics) else {
            return false;
        };
        for &t in event.topics.iter() {
            if self.topics.resolve(t).is_some_and(is_quiet) {
                self.forget_topic(t.id);
            }
        }
        true
    }

    /// Evicts the oldest events while retained events and kept topic metadata exceed
    /// `history.max_bytes`, keeping at least `keep` events and evicting at most `budget`.
    /// Returns how many it evicted.
    fn enforce_max_bytes(&mut self, keep: usize, budget: usize) -> usize {
        let mut evicted = 0;
        while evicted < budget
            && self.retained_bytes() > self.limits.max_bytes
            && self.timeline.len() > keep
            && self.evict_oldest()
        {
            evicted += 1;
        }
        evicted
    }

    /// Accepts an event: refuses it if one of its topics is final, else assigns the next
    /// id and encodes it once. It is not in history (nor delivered) until `commit`.
    pub fn accept(
        &mut self,
        p: &Publish,
        now_unix_ms: u64,
        unix_micros: u64,
    ) -> Result<Rc<Event>, String> {
        for name in &p.topics {
            if let Some(t) = self.topics.lookup(name)
                && self.topics.get(t).history.is_final()
            {
                return Err(format!("topic {name} is final"));
            }
        }
        let id = self.ids.next(unix_micros);
        Ok(self.build(
            id,
            now_unix_ms,
            &p.topics,
            p.event.as_deref(),
            &p.data,
            p.is_final,
        ))
    }

    /// An event read back from the log at start-up (ids continue above it).
    pub fn recover(
        &mut self,
        id: u64,
        published_unix_ms: u64,
        topics: &[Box<str>],
        event: Option<&str>,
        data: &str,
        is_final: bool,
    ) -> Rc<Event> {
        if id > self.ids.last() {
            self.ids = IdSequence::new(id);
        }
        self.build(id, published_unix_ms, topics, event, data, is_final)
    }

    fn build(
        &mut self,
        id: u64,
        published_at: u64,
        names: &[Box<str>],
        event: Option<&str>,
        data: &str,
        is_final: bool,
    ) -> Rc<Event> {
        let frame = sse::encode_event(id, event, data).into();
        let topics: Box<[TopicRef]> = names
            .iter()
            .map(|n| {
                let t = self.intern(n);
                self.topics.reference(t)
            })
            .collect();
        for t in topics.iter() {
            self.topics
                .get_mut(t.id)
                .history
                .note_published(id, is_final, published_at);
        }
        Rc::new(Event::new(id, frame, published_at, topics, is_final))
    }

    /// The event is durable: retain it in history (from now on it may be delivered), then
    /// evict the oldest events while events and topic metadata exceed `history.max_bytes`.
    pub fn commit(&mut self, event: &Rc<Event>) {
        self.timeline
            .retain(event.clone(), self.limits.max_events, &mut self.topics);
        // Never the event just committed: it is about to be fanned out to its topics.
        self.enforce_max_bytes(1, usize::MAX);
    }

    /// The event could not be made durable: undo its final mark (the id stays used).
    pub fn abandon(&mut self, event: &Event) {
        for &t in event.topics.iter() {
            if let Some(topic) = self.topics.resolve_mut(t)
                && topic.history.final_id == event.id
            {
                topic.history.final_id = 0;
            }
        }
    }

    /// Evicts events past `history.max_age`, lifts expired final marks, forgets the
    /// metadata of topics idle (no subscribers, no events) for longer than `max_age`, and
    /// holds `history.max_bytes` again (topics whose last stream left count in it from
    /// then on). Evicts at most `budget` events, so that a history that expires all at
    /// once is dropped over several turns instead of holding one (freeing 100,000 events
    /// takes 20–40 ms); `more` says the caller should come back soon.
    pub fn prune(&mut self, now_unix_ms: u64, budget: usize) -> Pruned {
        let max_age = self.limits.max_age;
        let mut evicted = 0;
        let aged = |hub: &Hub| {
            hub.timeline
                .oldest_published_at()
                .is_some_and(|at| now_unix_ms.saturating_sub(at) >= max_age)
        };
        while evicted < budget && aged(self) && self.evict_oldest() {
            evicted += 1;
        }
        if aged(self) {
            return Pruned {
                evicted,
                more: true,
            };
        }
        let mut forget = Vec::new();
        for t in self.topics.ids() {
            let topic = self.topics.get_mut(t);
            let h = &mut topic.history;
            if h.is_final() && now_unix_ms.saturating_sub(h.final_at) >= max_age {
                h.final_id = 0;
            }
            if topic.subscribers.is_empty()
                && h.is_empty()
                && !h.is_final()
                && now_unix_ms.saturating_sub(h.last_published_at) >= max_age
            {
                forget.push(t);
            }
        }
        for t in forget {
            self.forget_topic(t);
        }
        let left = budget - evicted;
        let cut = self.enforce_max_bytes(0, left);
        Pruned {
            evicted,
            more: cut == left && self.retained_bytes() > self.limits.max_bytes,
        }
    }

    /// Plans a stream for `topics` resuming from `resume` (the raw Last-Event-ID or
    /// lastEventId, `None` when absent or empty).
    pub fn plan_resume(&self, topics: &[TopicId], resume: Option<&str>) -> Resume {
        let histories: Vec<&Retained> = topics
            .iter()
            .map(|&t| &self.topics.get(t).history)
            .collect();
        self.plan(&histories, resume)
    }

    /// `plan_resume` by topic names, without creating topics: a name the hub does not know
    /// is planned as the topic it would be if created now (no events, the forgotten
    /// horizon as its evicted id). For deciding a request before anything is subscribed.
    pub fn plan_resume_names(&self, names: &[Box<str>], resume: Option<&str>) -> Resume {
        let fresh = Retained::new(self.forgotten_up_to);
        let histories: Vec<&Retained> = names.iter().map(|n| self.history_or(n, &fresh)).collect();
        self.plan(&histories, resume)
    }

    /// Highest evicted id on the topics named `names` (what a `reset` already told the
    /// client about), counting unknown names as if created now.
    pub fn evicted_up_to_names(&self, names: &[Box<str>]) -> u64 {
        let fresh = Retained::new(self.forgotten_up_to);
        names
            .iter()
            .map(|n| self.history_or(n, &fresh).evicted_up_to)
            .max()
            .unwrap_or(0)
    }

    fn history_or<'a>(&'a self, name: &str, fresh: &'a Retained) -> &'a Retained {
        match self.topics.lookup(name) {
            Some(t) => &self.topics.get(t).history,
            None => fresh,
        }
    }

    fn plan(&self, topics: &[&Retained], resume: Option<&str>) -> Resume {
        let any_final = topics.iter().any(|h| h.is_final());
        let Some(raw) = resume else {
            // A fresh request on a closing topic gets its history, then the end (protocol 2.4).
            return if any_final {
                Resume::Stream {
                    cursor: 0,
                    reset: None,
                    replay: true,
                }
            } else {
                Resume::Stream {
                    cursor: self.last_id(),
                    reset: None,
                    replay: false,
                }
            };
        };
        let earliest_id = topics.iter().filter_map(|h| h.oldest_id()).min();
        let reset = Some(Reset { earliest_id });
        let r = match parse_id(raw) {
            Some(r) if r <= self.last_id() => r,
            _ => {
                return Resume::Stream {
                    cursor: 0,
                    reset,
                    replay: true,
                };
            }
        };
        if topics.iter().all(|h| h.is_final() && r >= h.final_id) {
            return Resume::Finished;
        }
        // A topic's evicted id also covers what was forgotten before it was created.
        let missed_something_gone =
            r < self.remembers_from || topics.iter().any(|h| h.evicted_up_to > r);
        Resume::Stream {
            cursor: r,
            reset: if missed_something_gone { reset } else { None },
            replay: true,
        }
    }

    /// The resume id, when it is a decimal id above the last id (cluster mode: another
    /// node may have delivered it before this node read it) that the hub cannot already
    /// tell is gone (below where its memory starts, or inside forgotten ids: `reset` now,
    /// whatever the node reads later).
    pub fn ahead_of_last(&self, resume: Option<&str>) -> Option<u64> {
        resume.and_then(parse_id).filter(|&id| {
            id > self.last_id() && id >= self.remembers_from && id >= self.forgotten_up_to
        })
    }

    /// Cluster mode: ids up to `id` were issued elsewhere (Redis's last id at start-up, or
    /// the end of a gap): resumes up to it are planned against this node's history.
    pub fn raise_last(&mut self, id: u64) {
        if id > self.ids.last() {
            self.ids = IdSequence::new(id);
        }
    }

    /// The retained event with the smallest id above `cursor` on any of `topics`.
    pub fn next_after(&self, topics: &[TopicId], cursor: u64) -> Option<&Rc<Event>> {
        topics
            .iter()
            .filter_map(|&t| self.topics.get(t).history.after(cursor).next())
            .min_by_key(|e| e.id)
    }

    /// Whether an event on `topics` with an id above `cursor` was evicted unsent.
    pub fn evicted_after(&self, topics: &[TopicId], cursor: u64) -> bool {
        topics
            .iter()
            .any(|&t| self.topics.get(t).history.evicted_up_to > cursor)
    }

    /// Highest evicted id on `topics` (what a reset already told the client about).
    pub fn evicted_up_to(&self, topics: &[TopicId]) -> u64 {
        topics
            .iter()
            .map(|&t| self.topics.get(t).history.evicted_up_to)
            .max()
            .unwrap_or(0)
    }

    pub fn all_final(&self, topics: &[TopicId]) -> bool {
        topics
            .iter()
            .all(|&t| self.topics.get(t).history.is_final())
    }

    /// Whether a stream on `topics` that has been sent everything up to `cursor` is done:
    /// every topic is final and its final event was sent.
    pub fn stream_finished(&self, topics: &[TopicId], cursor: u64) -> bool {
        topics.iter().all(|&t| {
            let h = &self.topics.get(t).history;
            h.is_final() && h.final_id <= cursor
        })
    }
}

/// A topic kept for nothing: no event retained (nor one accepted and not yet committed: an
/// id must stay valid for it), no subscriber, no final mark to keep. Its metadata can go.
fn is_quiet(topic: &crate::pubsub::Topic) -> bool {
    let h = &topic.history;
    h.is_empty() && h.last_id <= h.evicted_up_to && topic.subscribers.is_empty() && !h.is_final()
}

/// A decimal event id (digits only, no sign, no spaces).
fn parse_id(raw: &str) -> Option<u64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::EVENT_OVERHEAD;
    use crate::pubsub::TOPIC_OVERHEAD;

    const LIMITS: Limits = Limits {
        max_events: 3,
        max_age: 60_000,
        max_bytes: 1 << 20,
    };

    fn publish(topics: &[&str], is_final: bool) -> Publish {
        Publish {
            topics: topics.iter().map(|t| (*t).into()).collect(),
            event: None,
            data: "x".into(),
            is_final,
            key: None,
        }
    }

    fn hub_with(events: &[(&[&str], bool)]) -> (Hub, Vec<u64>) {
        let mut hub = Hub::new(LIMITS, 0, 1_000);
        let mut ids = Vec::new();
        for (i, (topics, fin)) in events.iter().enumerate() {
            let e = hub
                .accept(&publish(topics, *fin), 0, 1_000 + i as u64 * 10)
                .unwrap();
            hub.commit(&e);
            ids.push(e.id);
        }
        (hub, ids)
    }

    #[test]
    fn no_resume_point_means_live_only() {
        let (hub, ids) = hub_with(&[(&["a"], false)]);
        let a = hub.topics.lookup("a").unwrap();
        assert_eq!(
            hub.plan_resume(&[a], None),
            Resume::Stream {
                cursor: ids[0],
                reset: None,
                replay: false
            }
        );
    }

    #[test]
    fn resume_replays_without_reset() {
        let (hub, ids) = hub_with(&[(&["a"], false), (&["b"], false), (&["a"], false)]);
        let (a, b) = (
            hub.topics.lookup("a").unwrap(),
            hub.topics.lookup("b").unwrap(),
        );
        let plan = hub.plan_resume(&[a, b], Some(&ids[0].to_string()));
        assert_eq!(
            plan,
            Resume::Stream {
                cursor: ids[0],
                reset: None,
                replay: true
            }
        );
        assert_eq!(hub.next_after(&[a, b], ids[0]).unwrap().id, ids[1]);
        assert_eq!(hub.next_after(&[a, b], ids[1]).unwrap().id, ids[2]);
        assert!(hub.next_after(&[a, b], ids[2]).is_none());
    }

    #[test]
    fn reset_cases() {
        let a: &[&str] = &["a"];
        let (hub, ids) = hub_with(&[(a, false); 5]);
        let a = hub.topics.lookup("a").unwrap();
        let earliest = Some(ids[2]);
        let reset = |cursor| Resume::Stream {
            cursor,
            reset: Some(Reset {
                earliest_id: earliest,
            }),
            replay: true,
        };
        assert_eq!(hub.plan_resume(&[a], Some("abc")), reset(0), "not decimal");
        assert_eq!(
            hub.plan_resume(&[a], Some("+5")),
            reset(0),
            "not plain decimal"
        );
        assert_eq!(
            hub.plan_resume(&[a], Some(&(ids[4] + 1).to_string())),
            reset(0),
            "future id"
        );
        assert_eq!(
            hub.plan_resume(&[a], Some("999")),
            reset(999),
            "predates the hub"
        );
        assert_eq!(
            hub.plan_resume(&[a], Some(&ids[0].to_string())),
            reset(ids[0]),
            "evicted"
        );
        assert_eq!(
            hub.plan_resume(&[a], Some(&ids[1].to_string())),
            Resume::Stream {
                cursor: ids[1],
                reset: None,
                replay: true
            },
            "ids[1] was evicted but the client saw it: nothing missed"
        );
    }

    #[test]
    fn final_topics() {
        let (mut hub, ids) = hub_with(&[(&["job"], false), (&["job"], true)]);
        let job = hub.topics.lookup("job").unwrap();
        assert_eq!(
            hub.plan_resume(&[job], Some(&ids[1].to_string())),
            Resume::Finished
        );
        assert_eq!(
            hub.plan_resume(&[job], Some(&ids[0].to_string())),
            Resume::Stream {
                cursor: ids[0],
                reset: None,
                replay: true
            }
        );
        assert_eq!(
            hub.plan_resume(&[job], None),
            Resume::Stream {
                cursor: 0,
                reset: None,
                replay: true
            }
        );
        assert!(hub.stream_finished(&[job], ids[1]));
        assert!(!hub.stream_finished(&[job], ids[0]));
        assert!(
            hub.accept(&publish(&["job"], false), 0, 0).is_err(),
            "final topic refuses"
        );
        hub.prune(LIMITS.max_age, usize::MAX);
        assert!(
            hub.accept(&publish(&["job"], false), LIMITS.max_age, 0)
                .is_ok(),
            "mark expired"
        );
    }

    #[test]
    fn forgotten_topics_make_old_resumes_reset() {
        let (mut hub, ids) = hub_with(&[(&["gone"], false), (&["kept"], false)]);
        hub.prune(LIMITS.max_age + 1, usize::MAX);
        assert!(
            hub.topics.lookup("gone").is_none(),
            "idle topic forgotten after max_age"
        );
        let fresh = hub.intern("gone");
        let plan = hub.plan_resume(&[fresh], Some(&ids[0].to_string()));
        assert!(matches!(plan, Resume::Stream { reset: Some(_), .. }));
        let plan = hub.plan_resume(&[fresh], Some(&ids[1].to_string()));
        assert!(matches!(plan, Resume::Stream { reset: None, .. }));
    }

    fn limits(max_events: usize, max_bytes: usize) -> Limits {
        Limits {
            max_events,
            max_age: 60_000,
            max_bytes,
        }
    }

    fn publish_to(hub: &mut Hub, topic: &str, at_us: u64) -> u64 {
        let e = hub
            .accept(&publish(&[topic], false), at_us / 1000, at_us)
            .unwrap();
        hub.commit(&e);
        e.id
    }

    #[test]
    fn a_quiet_topic_keeps_its_event_while_a_busy_one_churns() {
        let mut hub = Hub::new(limits(10, 1_000_000), 0, 500);
        let quiet = publish_to(&mut hub, "quiet", 1_000);
        for i in 0..20_000 {
            publish_to(&mut hub, "busy", 2_000 + i);
        }
        assert_eq!(hub.retained_events(), 11, "10 busy + 1 quiet");
        let q = hub.topics.lookup("quiet").unwrap();
        assert_eq!(
            hub.plan_resume(&[q], Some(&(quiet - 1).to_string())),
            Resume::Stream {
                cursor: quiet - 1,
                reset: None,
                replay: true
            }
        );
        let per_event = hub.timeline.bytes() / 11;
        assert!(
            per_event > EVENT_OVERHEAD,
            "bookkeeping counted: {per_event}"
        );
    }

    #[test]
    fn unique_topics_stay_within_the_byte_budget() {
        let max_bytes = 100_000;
        let mut hub = Hub::new(limits(1000, max_bytes), 0, 1_000);
        let mut first = 0;
        for i in 0..50_000u64 {
            let id = publish_to(&mut hub, &format!("t{i:0>100}"), 1_000 + i);
            if i == 0 {
                first = id;
            }
            assert!(hub.retained_bytes() <= max_bytes);
        }
        assert!(
            hub.topics.len() < max_bytes / TOPIC_OVERHEAD,
            "{}",
            hub.topics.len()
        );
        assert_eq!(hub.topics.len(), hub.retained_events());
        // The first topic was forgotten with its event: resuming it is a reset...
        let gone = hub.intern(&format!("t{:0>100}", 0));
        assert!(matches!(
            hub.plan_resume(&[gone], Some(&first.to_string())),
            Resume::Stream { reset: Some(_), .. }
        ));
    }

    #[test]
    fn forgetting_one_topic_does_not_reset_resumes_on_another() {
        let mut hub = Hub::new(limits(1000, 1 << 20), 0, 1_000);
        let k = publish_to(&mut hub, "kept", 1_000);
        publish_to(&mut hub, "gone", 2_000);
        publish_to(&mut hub, "kept", 70_000_000);
        hub.prune(70_000, usize::MAX);
        assert!(hub.topics.lookup("gone").is_none(), "idle past max_age");
        let kept_t = hub.topics.lookup("kept").unwrap();
        // "kept" lost its first event to age: a resume from before it is a reset, but one
        // from its first event is complete although "gone" (a later id) was forgotten.
        assert!(matches!(
            hub.plan_resume(&[kept_t], Some(&(k - 1).to_string())),
            Resume::Stream { reset: Some(_), .. }
        ));
        assert_eq!(
            hub.plan_resume(&[kept_t], Some(&k.to_string())),
            Resume::Stream {
                cursor: k,
                reset: None,
                replay: true
            }
        );
    }

    /// Issue 28, item 2: names streams ask for are not history; any number of them never
    /// evicts a published topic's events.
    #[test]
    fn subscriber_only_topics_never_push_history_out() {
        let max_bytes = 100_000;
        let mut hub = Hub::new(limits(1000, max_bytes), 0, 500);
        let first = publish_to(&mut hub, "a", 1_000);
        for i in 1..100 {
            publish_to(&mut hub, "a", 1_000 + i);
        }
        let before = hub.retained_bytes();
        // 10,000 names held by streams: over fifty times the cap in metadata.
        for c in 0..10_000u32 {
            let t = hub.intern(&format!("n{c:0>150}"));
            hub.subscribe(t, c);
        }
        assert_eq!(hub.retained_bytes(), before, "names are not history");
        assert_eq!(
            hub.subscribed_topic_bytes(),
            10_000 * (TOPIC_OVERHEAD + 151)
        );
        publish_to(&mut hub, "a", 2_000);
        hub.prune(2, usize::MAX);
        assert_eq!(hub.retained_events(), 101, "nothing evicted");
        assert!(hub.retained_bytes() <= max_bytes);
        let a = hub.topics.lookup("a").unwrap();
        assert_eq!(
            hub.plan_resume(&[a], Some(&first.to_string())),
            Resume::Stream {
                cursor: first,
                reset: None,
                replay: true
            }
        );
        // The streams leave: names that never had an event are forgotten at once.
        for c in 0..10_000u32 {
            let t = hub.topics.lookup(&format!("n{c:0>150}")).unwrap();
            hub.unsubscribe(t, c);
        }
        assert_eq!(hub.subscribed_topic_bytes(), 0);
        assert_eq!(hub.topic_count(), 1);
    }

    /// A subscribed topic keeps its metadata when its events are evicted; once its last
    /// stream leaves it is quiet and forgotten, so history's account holds only topics that
    /// have something to keep.
    #[test]
    fn a_quiet_topic_is_forgotten_when_its_last_stream_leaves() {
        let mut hub = Hub::new(limits(1, 1 << 20), 0, 500);
        let t = hub.intern("held");
        hub.subscribe(t, 7);
        let id = publish_to(&mut hub, "held", 1_000);
        hub.prune(LIMITS.max_age + 10, usize::MAX);
        assert!(hub.topics.lookup("held").is_some(), "a stream holds it");
        assert_eq!(hub.retained_events(), 0);
        hub.unsubscribe(t, 7);
        assert!(hub.topics.lookup("held").is_none(), "quiet: forgotten");
        assert_eq!(hub.retained_bytes(), 0);
        // Forgotten with its past: a resume from before its event on the name is a reset.
        let again = hub.intern("held");
        assert!(matches!(
            hub.plan_resume(&[again], Some(&(id - 1).to_string())),
            Resume::Stream { reset: Some(_), .. }
        ));
    }

    /// A history that expires all at once goes in slices of the budget.
    #[test]
    fn expiry_is_bounded_per_call() {
        let mut hub = Hub::new(limits(100_000, 1 << 30), 0, 500);
        for i in 0..10_000 {
            publish_to(&mut hub, &format!("t{}", i % 7), 1_000 + i);
        }
        let later = LIMITS.max_age + 100;
        let mut calls = Vec::new();
        loop {
            let pruned = hub.prune(later, 3_000);
            calls.push(pruned.evicted);
            if !pruned.more {
                break;
            }
        }
        assert_eq!(calls, [3_000, 3_000, 3_000, 1_000]);
        assert_eq!(hub.retained_events(), 0);
        assert_eq!(hub.topic_count(), 0, "quiet topics forgotten at the end");
    }

    /// Cluster mode: an id above the last id waits for the node only when the node cannot
    /// already tell it is gone.
    #[test]
    fn only_ids_the_node_may_still_read_are_ahead() {
        let mut hub = Hub::new(limits(1000, 1 << 20), 0, 5_000);
        hub.raise_last(6_000);
        assert_eq!(hub.ahead_of_last(Some("7000")), Some(7_000));
        assert_eq!(
            hub.ahead_of_last(Some("6000")),
            None,
            "not above the last id"
        );
        assert_eq!(hub.ahead_of_last(Some("x")), None);
        // An empty data set at start-up: ids from before it are gone, whatever comes.
        let mut empty = Hub::new(limits(1000, 1 << 20), 0, 5_000);
        empty.set_remembers_from(9_000);
        assert_eq!(empty.ahead_of_last(Some("7000")), None);
        assert_eq!(empty.ahead_of_last(Some("9500")), Some(9_500));
        hub.note_forgotten(8_000);
        assert_eq!(hub.ahead_of_last(Some("7000")), None, "inside a gap");
        assert_eq!(hub.ahead_of_last(Some("8000")), Some(8_000));
    }

    #[test]
    fn recovery_cut_resets_every_topic() {
        let mut hub = Hub::new(limits(1000, 1 << 20), 0, 1_000);
        let a = publish_to(&mut hub, "a", 1_000);
        hub.note_forgotten(a + 5);
        let t = hub.topics.lookup("a").unwrap();
        assert!(matches!(
            hub.plan_resume(&[t], Some(&a.to_string())),
            Resume::Stream { reset: Some(_), .. }
        ));
        let fresh = hub.intern("b");
        assert!(matches!(
            hub.plan_resume(&[fresh], Some(&a.to_string())),
            Resume::Stream { reset: Some(_), .. }
        ));
    }

    #[test]
    fn planning_by_name_matches_planning_by_id_and_creates_nothing() {
        let (mut hub, ids) = hub_with(&[(&["a"], false), (&["a"], false)]);
        hub.note_log_trimmed(ids[0]);
        let a = hub.topics.lookup("a").unwrap();
        let names: Vec<Box<str>> = vec!["a".into(), "new".into()];
        let before = hub.topics.len();
        for r in [
            None,
            Some("x"),
            Some(&*ids[0].to_string()),
            Some(&*(ids[0] - 1).to_string()),
        ] {
            let by_name = hub.plan_resume_names(&names, r);
            let fresh = hub.intern("new");
            assert_eq!(by_name, hub.plan_resume(&[a, fresh], r), "{r:?}");
            assert_eq!(
                hub.evicted_up_to_names(&names),
                hub.evicted_up_to(&[a, fresh])
            );
            hub.topics.forget_if_idle(fresh);
        }
        assert_eq!(hub.topics.len(), before);
    }
}
