//! Event ids and retained events: the id sequence (SPEC 2.2), the `Event` record shared by
//! every topic it was published to, per-topic metadata (last id, highest evicted id, final
//! mark) and the retention bounds (count per topic, age, total bytes). Pure: time is passed
//! in (Unix milliseconds, so ages survive restarts); never touches sockets.

use crate::sse::Frame;
use std::collections::VecDeque;
use std::rc::Rc;

/// A topic's index in the topic registry (`pubsub::Topics`).
pub type TopicId = u32;

/// One strictly increasing id sequence for the whole hub: next = max(last + 1, now in µs),
/// so ids keep increasing across restarts even without a data directory.
#[derive(Debug)]
pub struct IdSequence {
    last: u64,
}

impl IdSequence {
    pub fn new(last_issued: u64) -> Self {
        IdSequence { last: last_issued }
    }

    pub fn next(&mut self, unix_micros: u64) -> u64 {
        self.last = (self.last + 1).max(unix_micros);
        self.last
    }

    pub fn last(&self) -> u64 {
        self.last
    }
}

/// A published event as retained in history: its wire bytes (shared with every queue that
/// sends it) and the topics it went to.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    pub frame: Frame,
    /// Unix time in milliseconds.
    pub published_at: u64,
    pub topics: Box<[TopicId]>,
    pub is_final: bool,
}

/// The retention limits of `[history]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    /// Milliseconds.
    pub max_age: u64,
    pub max_bytes: usize,
}

/// A topic's retained events in id order, and what it remembers beyond them.
#[derive(Debug, Default)]
pub struct Retained {
    events: VecDeque<Rc<Event>>,
    /// Highest id this topic ever dropped from its history (0: none), so a resume can tell
    /// whether the client missed something that is gone.
    pub evicted_up_to: u64,
    /// Id of the newest event accepted for the topic (0: none yet).
    pub last_id: u64,
    /// Unix ms of that event.
    pub last_published_at: u64,
    /// The topic's final event (0: not final), and when the mark was set (Unix ms).
    pub final_id: u64,
    pub final_at: u64,
}

impl Retained {
    pub fn is_final(&self) -> bool {
        self.final_id != 0
    }

    /// Records a newly accepted event's id (before it is durable): the final mark must
    /// refuse further publishes from this moment.
    pub fn note_published(&mut self, id: u64, is_final: bool, now_unix_ms: u64) {
        self.last_id = id;
        self.last_published_at = now_unix_ms;
        if is_final {
            self.final_id = id;
            self.final_at = now_unix_ms;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn oldest_id(&self) -> Option<u64> {
        self.events.front().map(|e| e.id)
    }

    pub fn newest_id(&self) -> Option<u64> {
        self.events.back().map(|e| e.id)
    }

    /// Retained events with an id greater than `id`, oldest first.
    pub fn after(&self, id: u64) -> impl Iterator<Item = &Rc<Event>> {
        let start = self.events.partition_point(|e| e.id <= id);
        self.events.range(start..)
    }

    fn push(&mut self, event: Rc<Event>, max_events: usize) {
        self.events.push_back(event);
        while self.events.len() > max_events {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.events.pop_front() {
            self.evicted_up_to = self.evicted_up_to.max(e.id);
        }
    }

    /// Drops the front event if it is `id` (used by age and byte eviction, which go in
    /// global id order, so the event is at the front of every topic still holding it).
    fn drop_if_front(&mut self, id: u64) {
        if self.oldest_id() == Some(id) {
            self.pop_front();
        }
    }
}

/// Where each topic's `Retained` lives (the topic registry; a plain Vec in tests).
pub trait Histories {
    fn history(&mut self, topic: TopicId) -> &mut Retained;
}

impl Histories for Vec<Retained> {
    fn history(&mut self, topic: TopicId) -> &mut Retained {
        &mut self[topic as usize]
    }
}

/// All retained events in id order, for age and total-byte eviction across topics.
#[derive(Debug, Default)]
pub struct Timeline {
    events: VecDeque<Rc<Event>>,
    bytes: usize,
}

impl Timeline {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Retains `event` in each of its topics and in the timeline, then enforces the limits.
    pub fn retain(&mut self, event: Rc<Event>, limits: &Limits, topics: &mut impl Histories) {
        for &t in event.topics.iter() {
            topics.history(t).push(event.clone(), limits.max_events);
        }
        self.bytes += event.frame.len();
        self.events.push_back(event);
        self.forget_unreferenced();
        while self.bytes > limits.max_bytes && self.evict_oldest(topics).is_some() {}
    }

    /// Evicts events older than `max_age`; returns them (their topics may now be empty).
    pub fn prune(
        &mut self,
        now_unix_ms: u64,
        limits: &Limits,
        topics: &mut impl Histories,
    ) -> Vec<Rc<Event>> {
        let mut evicted = Vec::new();
        while let Some(front) = self.events.front() {
            if now_unix_ms.saturating_sub(front.published_at) < limits.max_age {
                break;
            }
            evicted.extend(self.evict_oldest(topics));
        }
        evicted
    }

    fn evict_oldest(&mut self, topics: &mut impl Histories) -> Option<Rc<Event>> {
        let event = self.events.pop_front()?;
        for &t in event.topics.iter() {
            topics.history(t).drop_if_front(event.id);
        }
        self.bytes -= event.frame.len();
        self.forget_unreferenced();
        Some(event)
    }

    /// Events at the front that no topic holds any more (evicted by a topic's count limit)
    /// are released here so their bytes stop counting.
    fn forget_unreferenced(&mut self) {
        while let Some(front) = self.events.front() {
            if Rc::strong_count(front) > 1 {
                break;
            }
            self.bytes -= front.frame.len();
            self.events.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, at: u64, topics: &[TopicId], size: usize) -> Rc<Event> {
        Rc::new(Event {
            id,
            frame: vec![b'x'; size].into(),
            published_at: at,
            topics: topics.into(),
            is_final: false,
        })
    }

    const LIMITS: Limits = Limits {
        max_events: 3,
        max_age: 1000,
        max_bytes: 1000,
    };

    #[test]
    fn ids_increase_and_follow_the_clock() {
        let mut seq = IdSequence::new(0);
        assert_eq!(seq.next(1_000), 1_000);
        assert_eq!(seq.next(1_000), 1_001);
        assert_eq!(seq.next(999), 1_002, "clock going back never reuses an id");
        assert_eq!(seq.next(5_000), 5_000);
        let mut restarted = IdSequence::new(9_000);
        assert_eq!(restarted.next(5_000), 9_001);
    }

    #[test]
    fn count_limit_per_topic() {
        let mut topics = vec![Retained::default(), Retained::default()];
        let mut tl = Timeline::default();
        for id in 1..=5 {
            tl.retain(event(id, 0, &[0], 10), &LIMITS, &mut topics);
        }
        tl.retain(event(6, 0, &[1], 10), &LIMITS, &mut topics);
        let ids: Vec<u64> = topics[0].after(0).map(|e| e.id).collect();
        assert_eq!(ids, [3, 4, 5]);
        assert_eq!(topics[0].evicted_up_to, 2);
        assert_eq!(topics[1].len(), 1);
        assert_eq!(tl.len(), 4, "evicted events no longer count");
        assert_eq!(tl.bytes(), 40);
    }

    #[test]
    fn after_skips_seen_ids() {
        let mut topics = vec![Retained::default()];
        let mut tl = Timeline::default();
        for id in [10, 20, 30] {
            tl.retain(event(id, 0, &[0], 1), &LIMITS, &mut topics);
        }
        let after = |id| topics[0].after(id).map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(after(0), [10, 20, 30]);
        assert_eq!(after(10), [20, 30]);
        assert_eq!(after(25), [30]);
        assert_eq!(after(30), Vec::<u64>::new());
    }

    #[test]
    fn age_limit_evicts_across_topics() {
        let mut topics = vec![Retained::default(), Retained::default()];
        let mut tl = Timeline::default();
        tl.retain(event(1, 0, &[0, 1], 10), &LIMITS, &mut topics);
        tl.retain(event(2, 500, &[1], 10), &LIMITS, &mut topics);
        assert!(tl.prune(999, &LIMITS, &mut topics).is_empty());
        assert_eq!(tl.prune(1000, &LIMITS, &mut topics).len(), 1);
        assert!(topics[0].is_empty());
        assert_eq!(topics[1].oldest_id(), Some(2));
        assert_eq!(topics[1].evicted_up_to, 1);
        assert_eq!(tl.bytes(), 10);
    }

    #[test]
    fn byte_limit_evicts_oldest_first() {
        let mut topics = vec![Retained::default(), Retained::default()];
        let mut tl = Timeline::default();
        let limits = Limits {
            max_events: 100,
            max_age: 1000,
            max_bytes: 250,
        };
        for id in 1..=3 {
            tl.retain(
                event(id, 0, &[(id % 2) as TopicId], 100),
                &limits,
                &mut topics,
            );
        }
        assert_eq!(tl.bytes(), 200);
        assert_eq!(topics[1].oldest_id(), Some(3));
        assert_eq!(topics[0].oldest_id(), Some(2));
    }
}
