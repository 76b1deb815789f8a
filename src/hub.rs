//! The publish path behind one boundary (SPEC 7): assign an id, encode once, retain in
//! history, and hand the event back for fan-out. Owns topics, history and the id sequence;
//! never touches sockets, so another backend (a shared stream) can replace it later.

use crate::history::{Event, IdSequence, Limits, Timeline, TopicId};
use crate::ingest::line::Publish;
use crate::pubsub::Topics;
use crate::sse;
use crate::timer::Millis;
use std::rc::Rc;

pub struct Hub {
    pub topics: Topics,
    timeline: Timeline,
    ids: IdSequence,
    limits: Limits,
}

impl Hub {
    pub fn new(limits: Limits, last_issued: u64) -> Self {
        Hub {
            topics: Topics::default(),
            timeline: Timeline::default(),
            ids: IdSequence::new(last_issued),
            limits,
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

    /// Assigns the next id, encodes the event once and retains it in each of its topics.
    /// The returned event is what fan-out sends (`event.frame`, shared).
    pub fn publish(&mut self, p: &Publish, now: Millis, unix_micros: u64) -> Rc<Event> {
        let id = self.ids.next(unix_micros);
        let frame = sse::encode_event(id, p.event.as_deref(), &p.data).into();
        let topics: Box<[TopicId]> = p
            .topics
            .iter()
            .map(|name| self.topics.intern(name))
            .collect();
        let event = Rc::new(Event {
            id,
            frame,
            published_at: now,
            topics,
            is_final: p.is_final,
        });
        self.timeline
            .retain(event.clone(), &self.limits, &mut self.topics);
        event
    }

    /// Evicts events past `history.max_age` and forgets topics left with nothing.
    pub fn prune(&mut self, now: Millis) -> usize {
        let evicted = self.timeline.prune(now, &self.limits, &mut self.topics);
        let mut touched: Vec<TopicId> = evicted
            .iter()
            .flat_map(|e| e.topics.iter().copied())
            .collect();
        touched.sort_unstable();
        touched.dedup();
        for t in touched {
            self.topics.forget_if_unused(t);
        }
        evicted.len()
    }
}
