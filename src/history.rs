//! Event ids and retained events: the id sequence (protocol 2.2), the `Event` record shared by
//! every topic it was published to, per-topic metadata (last id, highest evicted id, final
//! mark) and the retention bounds (count per topic, age, total bytes). Pure: time is passed
//! in (Unix milliseconds, so ages survive restarts); never touches sockets.

use crate::sse::Frame;
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

/// A topic's index in the topic registry (`pubsub::Topics`). A stream holds its topics by
/// index: it is subscribed to them, so none of them is forgotten while it holds it.
pub type TopicId = u32;

/// A topic as an event names it: its index and that slot's generation when the event was
/// accepted. An event can outlive its topic's metadata (evicted, the topic forgotten, its
/// slot reused by a new topic, all before the event's fan-out), so the fan-out looks a
/// topic up only when the generation still matches: an event can never reach the streams
/// of a later topic that happens to sit in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicRef {
    pub id: TopicId,
    pub generation: u32,
}

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
    pub topics: Box<[TopicRef]>,
    pub is_final: bool,
    /// How many topics' histories hold this event; at 0 it leaves the timeline (and
    /// memory) wherever it is (fits in `Event`'s padding: the struct stays 56 bytes).
    held_by: Cell<u8>,
}

/// Bookkeeping of one retained event beyond its frame bytes, counted against
/// `history.max_bytes` so that memory stays within a small factor of it: the `Rc<Event>`
/// allocation (16 + 56 bytes, 80 with malloc's header), the frame's `Rc` header and malloc
/// rounding (~24), the topic list allocation (32: up to three `TopicRef`s) and the event's
/// timeline slot (16 bytes, up to twice that with deque growth and not yet compacted
/// gaps): 176 in all. Measured: `tests/history_memory.rs` and
/// bench-results/2026-11-28-issue16-data-safety.md.
pub const EVENT_OVERHEAD: usize = 176;
/// Per topic of an event: its slot in that topic's deque (8 bytes, up to 16 with growth)
/// and its `TopicRef` in the event's topic list (8 bytes).
pub const EVENT_PER_TOPIC: usize = 24;

impl Event {
    pub fn new(
        id: u64,
        frame: Frame,
        published_at: u64,
        topics: Box<[TopicRef]>,
        is_final: bool,
    ) -> Event {
        Event {
            id,
            frame,
            published_at,
            topics,
            is_final,
            held_by: Cell::new(0),
        }
    }

    /// What retaining this event costs, as counted against `history.max_bytes`: its
    /// frame as the allocator holds it (`frame_bytes`) and its bookkeeping.
    pub fn cost(&self) -> usize {
        frame_bytes(self.frame.len()) + EVENT_OVERHEAD + EVENT_PER_TOPIC * self.topics.len()
    }
}

/// The bytes a frame of `len` bytes takes beyond what `EVENT_OVERHEAD` counts for it: its
/// length rounded up as the allocator rounds its block (the `Rc` header of 16 bytes
/// included, then taken off again: `EVENT_OVERHEAD` counts it). The binary allocates
/// through jemalloc, whose size classes above 128 bytes are four per doubling (160, 192,
/// 224, 256, 320, …, and the same spacing for large blocks): a 1,000-byte frame takes a
/// 1,280-byte block. Counting that keeps `history.max_bytes` an upper bound of the
/// memory history really holds, whatever the event size.
pub fn frame_bytes(len: usize) -> usize {
    size_class(len + 16) - 16
}

/// jemalloc's size class for a request of `n` bytes (16-byte quantum, 4 KiB pages).
fn size_class(n: usize) -> usize {
    if n <= 8 {
        return 8;
    }
    if n <= 128 {
        return n.div_ceil(16) * 16;
    }
    // n in (2^k, 2^(k+1)]: classes 2^k + i × 2^(k−2), i = 1..=4.
    let k = usize::BITS - 1 - (n - 1).leading_zeros();
    let step = 1usize << (k - 2);
    n.div_ceil(step) * step
}

/// The retention limits of `[history]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    /// Milliseconds.
    pub max_age: u64,
    /// Bytes of retained events and topic metadata together (`Event::cost`,
    /// `pubsub::Topics::bytes`).
    pub max_bytes: usize,
}

/// A topic's retained events in id order, and what it remembers beyond them.
#[derive(Debug, Default)]
pub struct Retained {
    events: VecDeque<Rc<Event>>,
    /// Highest id this topic ever dropped from its history, or that may have been published
    /// to it and forgotten before it was (re)created (0: none), so a resume can tell
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
    /// A topic created now: resumes from below `horizon` may have missed events published
    /// to an earlier topic of the same name that the hub has forgotten.
    pub fn new(horizon: u64) -> Retained {
        Retained {
            evicted_up_to: horizon,
            ..Retained::default()
        }
    }

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

    /// Retained events with an id greater than `id`, oldest first.
    pub fn after(&self, id: u64) -> impl Iterator<Item = &Rc<Event>> {
        let start = self.events.partition_point(|e| e.id <= id);
        self.events.range(start..)
    }

    /// Appends `event`; returns the event the count limit pushed out, if any.
    fn push(&mut self, event: Rc<Event>, max_events: usize) -> Option<Rc<Event>> {
        event.held_by.set(event.held_by.get().saturating_add(1));
        self.events.push_back(event);
        if self.events.len() > max_events {
            return self.pop_front();
        }
        None
    }

    fn pop_front(&mut self) -> Option<Rc<Event>> {
        let e = self.events.pop_front()?;
        self.evicted_up_to = self.evicted_up_to.max(e.id);
        e.held_by.set(e.held_by.get().saturating_sub(1));
        Some(e)
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

/// All retained events in id order, for age and total-byte eviction across topics. An
/// event every topic has dropped (by its count limit) leaves at once, wherever it is: its
/// slot becomes a gap, so that one old event kept by a quiet topic never keeps the later
/// events of busy topics alive. Gaps at the front go at once; the deque is compacted when
/// gaps outnumber events, so slots stay within about twice the retained events.
#[derive(Debug, Default)]
pub struct Timeline {
    slots: VecDeque<Slot>,
    /// Events in `slots` (slots that are not gaps).
    events: usize,
    /// `Event::cost` of those events.
    bytes: usize,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    /// None: a gap (the event was dropped by every topic's count limit).
    event: Option<Rc<Event>>,
}

/// Gaps tolerated before compaction is considered at all.
const MIN_GAPS_TO_COMPACT: usize = 1024;

impl Timeline {
    /// Bytes counted against `history.max_bytes` (`Event::cost` of every retained event).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Retains `event` in each of its topics and in the timeline; events pushed out by a
    /// topic's count limit that no topic holds any more are released.
    pub fn retain(&mut self, event: Rc<Event>, max_events: usize, topics: &mut impl Histories) {
        // Released at once (no list: this runs for every published event), before the new
        // slot exists; a released event is older, so its slot is already there.
        for t in event.topics.iter() {
            if let Some(out) = topics.history(t.id).push(event.clone(), max_events)
                && out.held_by.get() == 0
            {
                self.release(out.id);
            }
        }
        self.bytes += event.cost();
        self.events += 1;
        self.slots.push_back(Slot {
            id: event.id,
            event: Some(event),
        });
    }

    /// Evicts the oldest event from every topic and from the timeline.
    pub fn evict_oldest(&mut self, topics: &mut impl Histories) -> Option<Rc<Event>> {
        let event = self.slots.pop_front()?.event?;
        for t in event.topics.iter() {
            topics.history(t.id).drop_if_front(event.id);
        }
        self.forget(&event);
        self.drop_front_gaps();
        Some(event)
    }

    /// Unix ms of the oldest retained event.
    pub fn oldest_published_at(&self) -> Option<u64> {
        self.slots
            .front()
            .and_then(|s| s.event.as_ref())
            .map(|e| e.published_at)
    }

    /// The event `id` is held by no topic any more: turn its slot into a gap.
    fn release(&mut self, id: u64) {
        let Ok(i) = self.slots.binary_search_by_key(&id, |s| s.id) else {
            return;
        };
        if let Some(event) = self.slots[i].event.take() {
            self.forget(&event);
        }
        self.drop_front_gaps();
        let gaps = self.slots.len() - self.events;
        if gaps > MIN_GAPS_TO_COMPACT && gaps > self.events {
            self.slots.retain(|s| s.event.is_some());
            self.slots.shrink_to(self.events * 2);
        }
    }

    fn forget(&mut self, event: &Event) {
        self.bytes -= event.cost();
        self.events -= 1;
    }

    fn drop_front_gaps(&mut self) {
        while self.slots.front().is_some_and(|s| s.event.is_none()) {
            self.slots.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, at: u64, topics: &[TopicId], size: usize) -> Rc<Event> {
        let topics = topics.iter().map(|&id| TopicRef { id, generation: 0 });
        Rc::new(Event::new(
            id,
            vec![b'x'; size].into(),
            at,
            topics.collect(),
            false,
        ))
    }

    fn cost(size: usize, topics: usize) -> usize {
        frame_bytes(size) + EVENT_OVERHEAD + EVENT_PER_TOPIC * topics
    }

    #[test]
    fn size_classes_are_jemallocs() {
        let classes: Vec<usize> = [1, 8, 9, 17, 128, 129, 160, 161, 257, 1016, 1025, 16385]
            .iter()
            .map(|&n| size_class(n))
            .collect();
        assert_eq!(
            classes,
            [8, 8, 16, 32, 128, 160, 160, 192, 320, 1024, 1280, 20480]
        );
        assert_eq!(
            frame_bytes(1000),
            1008,
            "1,016 bytes fit a 1,024-byte block"
        );
        assert_eq!(
            frame_bytes(1010),
            1264,
            "1,026 bytes take a 1,280-byte block"
        );
        assert_eq!(frame_bytes(0), 0);
    }

    #[test]
    fn event_stays_small() {
        assert_eq!(std::mem::size_of::<Event>(), 56);
    }

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
            tl.retain(event(id, 0, &[0], 10), 3, &mut topics);
        }
        tl.retain(event(6, 0, &[1], 10), 3, &mut topics);
        let ids: Vec<u64> = topics[0].after(0).map(|e| e.id).collect();
        assert_eq!(ids, [3, 4, 5]);
        assert_eq!(topics[0].evicted_up_to, 2);
        assert_eq!(topics[1].len(), 1);
        assert_eq!(tl.len(), 4, "evicted events no longer count");
        assert_eq!(tl.bytes(), 4 * cost(10, 1));
    }

    #[test]
    fn count_evicted_events_leave_behind_an_older_pinned_one() {
        // Topic 0 keeps one old event; topic 1 is busy. Every event topic 1 drops must
        // leave the timeline although event 1 is still in front of it.
        let mut topics = vec![Retained::default(), Retained::default()];
        let mut tl = Timeline::default();
        tl.retain(event(1, 0, &[0], 10), 10, &mut topics);
        for id in 2..=100_002 {
            tl.retain(event(id, 0, &[1], 60), 10, &mut topics);
        }
        assert_eq!(tl.len(), 11);
        assert_eq!(tl.bytes(), cost(10, 1) + 10 * cost(60, 1));
        assert!(
            tl.slots.len() <= 2 * 11 + MIN_GAPS_TO_COMPACT + 1,
            "gaps are compacted: {} slots",
            tl.slots.len()
        );
        assert_eq!(topics[0].oldest_id(), Some(1));
        assert_eq!(topics[0].evicted_up_to, 0, "the quiet topic lost nothing");
        // The pinned event leaves by age (front), and the gaps behind it with it.
        let e = tl.evict_oldest(&mut topics).unwrap();
        assert_eq!(e.id, 1);
        assert_eq!(tl.oldest_published_at(), Some(0));
        assert_eq!(tl.len(), 10);
        assert!(topics[0].is_empty());
    }

    #[test]
    fn multi_topic_event_stays_while_one_topic_holds_it() {
        let mut topics = vec![Retained::default(), Retained::default()];
        let mut tl = Timeline::default();
        tl.retain(event(1, 0, &[0, 1], 10), 2, &mut topics);
        tl.retain(event(2, 0, &[0], 10), 2, &mut topics);
        tl.retain(event(3, 0, &[0], 10), 2, &mut topics);
        assert_eq!(topics[0].oldest_id(), Some(2), "topic 0 dropped event 1");
        assert_eq!(topics[1].oldest_id(), Some(1), "topic 1 still holds it");
        assert_eq!(tl.len(), 3);
        tl.retain(event(4, 0, &[1], 10), 2, &mut topics);
        tl.retain(event(5, 0, &[1], 10), 2, &mut topics);
        assert_eq!(tl.len(), 4, "event 1 left once no topic held it");
        assert_eq!(tl.bytes(), 4 * cost(10, 1));
    }

    #[test]
    fn after_skips_seen_ids() {
        let mut topics = vec![Retained::default()];
        let mut tl = Timeline::default();
        for id in [10, 20, 30] {
            tl.retain(event(id, 0, &[0], 1), 3, &mut topics);
        }
        let after = |id| topics[0].after(id).map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(after(0), [10, 20, 30]);
        assert_eq!(after(10), [20, 30]);
        assert_eq!(after(25), [30]);
        assert_eq!(after(30), Vec::<u64>::new());
    }

    #[test]
    fn oldest_eviction_goes_across_topics() {
        let mut topics = vec![Retained::default(), Retained::default()];
        let mut tl = Timeline::default();
        tl.retain(event(1, 0, &[0, 1], 10), 3, &mut topics);
        tl.retain(event(2, 500, &[1], 10), 3, &mut topics);
        assert_eq!(tl.oldest_published_at(), Some(0));
        assert_eq!(tl.evict_oldest(&mut topics).map(|e| e.id), Some(1));
        assert!(topics[0].is_empty());
        assert_eq!(topics[1].oldest_id(), Some(2));
        assert_eq!(topics[1].evicted_up_to, 1);
        assert_eq!(tl.bytes(), cost(10, 1));
        assert_eq!(tl.oldest_published_at(), Some(500));
    }

    #[test]
    fn new_topic_starts_at_the_horizon() {
        assert_eq!(Retained::new(42).evicted_up_to, 42);
    }
}
