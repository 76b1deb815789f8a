//! The publish path behind one boundary (SPEC 7): accept an event (check final marks,
//! assign an id, encode once), commit it to history once durable, and plan resumes (what
//! a reconnecting client is owed, or that it must be told `reset`). Owns topics, history
//! and the id sequence; never touches sockets, so another backend can replace it later.

use crate::history::{Event, IdSequence, Limits, Timeline, TopicId};
use crate::ingest::line::Publish;
use crate::pubsub::Topics;
use crate::sse;
use std::rc::Rc;

pub struct Hub {
    pub topics: Topics,
    timeline: Timeline,
    ids: IdSequence,
    limits: Limits,
    /// Ids below this predate what the hub remembers: the first id ever issued with the
    /// data directory, or this process's start in Unix µs without one.
    remembers_from: u64,
    /// Highest id of any event whose topic metadata (or log segment) has been forgotten:
    /// a resume from below it cannot be proven complete.
    forgotten_up_to: u64,
}

/// What a stream request is owed (SPEC 2.2, 2.4).
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

    pub fn retained_bytes(&self) -> usize {
        self.timeline.bytes()
    }

    pub fn set_remembers_from(&mut self, id: u64) {
        self.remembers_from = id;
    }

    pub fn note_forgotten(&mut self, id: u64) {
        self.forgotten_up_to = self.forgotten_up_to.max(id);
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
        let topics: Box<[TopicId]> = names.iter().map(|n| self.topics.intern(n)).collect();
        for &t in topics.iter() {
            self.topics
                .get_mut(t)
                .history
                .note_published(id, is_final, published_at);
        }
        Rc::new(Event {
            id,
            frame,
            published_at,
            topics,
            is_final,
        })
    }

    /// The event is durable: retain it in history (from now on it may be delivered).
    pub fn commit(&mut self, event: &Rc<Event>) {
        self.timeline
            .retain(event.clone(), &self.limits, &mut self.topics);
    }

    /// The event could not be made durable: undo its final mark (the id stays used).
    pub fn abandon(&mut self, event: &Event) {
        for &t in event.topics.iter() {
            let h = &mut self.topics.get_mut(t).history;
            if h.final_id == event.id {
                h.final_id = 0;
            }
        }
    }

    /// Evicts events past `history.max_age`, lifts expired final marks, and forgets the
    /// metadata of topics idle (no subscribers, no events) for longer than `max_age`.
    pub fn prune(&mut self, now_unix_ms: u64) -> usize {
        let evicted = self
            .timeline
            .prune(now_unix_ms, &self.limits, &mut self.topics)
            .len();
        let max_age = self.limits.max_age;
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
                forget.push((t, h.last_id.max(h.evicted_up_to)));
            }
        }
        for (t, last) in forget {
            self.note_forgotten(last);
            self.topics.forget(t);
        }
        evicted
    }

    /// Plans a stream for `topics` resuming from `resume` (the raw Last-Event-ID or
    /// lastEventId, `None` when absent or empty).
    pub fn plan_resume(&self, topics: &[TopicId], resume: Option<&str>) -> Resume {
        let history = |t: TopicId| &self.topics.get(t).history;
        let any_final = topics.iter().any(|&t| history(t).is_final());
        let Some(raw) = resume else {
            // A fresh request on a closing topic gets its history, then the end (SPEC 2.4).
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
        let earliest_id = topics.iter().filter_map(|&t| history(t).oldest_id()).min();
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
        if topics.iter().all(|&t| {
            let h = history(t);
            h.is_final() && r >= h.final_id
        }) {
            return Resume::Finished;
        }
        let missed_something_gone = r < self.remembers_from
            || r < self.forgotten_up_to
            || topics.iter().any(|&t| history(t).evicted_up_to > r);
        Resume::Stream {
            cursor: r,
            reset: if missed_something_gone { reset } else { None },
            replay: true,
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
        hub.prune(LIMITS.max_age);
        assert!(
            hub.accept(&publish(&["job"], false), LIMITS.max_age, 0)
                .is_ok(),
            "mark expired"
        );
    }

    #[test]
    fn forgotten_topics_make_old_resumes_reset() {
        let (mut hub, ids) = hub_with(&[(&["gone"], false), (&["kept"], false)]);
        hub.prune(LIMITS.max_age + 1);
        assert!(
            hub.topics.lookup("gone").is_none(),
            "idle topic forgotten after max_age"
        );
        let fresh = hub.topics.intern("gone");
        let plan = hub.plan_resume(&[fresh], Some(&ids[0].to_string()));
        assert!(matches!(plan, Resume::Stream { reset: Some(_), .. }));
        let plan = hub.plan_resume(&[fresh], Some(&ids[1].to_string()));
        assert!(matches!(plan, Resume::Stream { reset: None, .. }));
    }
}
