//! The topic registry: name ↔ `TopicId`, each topic's subscribers (connection keys) and its
//! retained history, each slot's generation (`TopicRef`), and what the topics' metadata
//! costs in two accounts: topics kept for their history (counted in `history.max_bytes`)
//! and topics held by streams (bounded by connections × `streams.max_topics`). Owns who is
//! subscribed to what; never writes to a socket (fan-out queues frames through `fanout`,
//! the event loop writes).

use crate::history::{Histories, Retained, TopicId, TopicRef};
use slab::Slab;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// A connection's slab key, as stored in subscriber sets (u32 keeps the sets small).
pub type ConnKey = u32;

pub struct Topic {
    /// Shared with the name index: one allocation per topic name.
    pub name: Rc<str>,
    /// Which of the topics that used this slot it is (`TopicRef::generation`).
    pub generation: u32,
    pub subscribers: HashSet<ConnKey, BuildHasherDefault<KeyHasher>>,
    pub history: Retained,
}

/// Bookkeeping of one topic beyond its name bytes: the `Topic` in the slab (136 bytes, up
/// to twice that with growth), its name-index entry (~40 with hashbrown's load factor and
/// growth), its entry in the ordered name set (~30, since 2026-12-07) and the name's `Rc`
/// header and malloc rounding (~32). Measured with a million unique topics:
/// bench-results/2026-11-28-issue16-data-safety.md, bench-results/2026-12-07-topics.md
/// (704 real against 764 counted bytes per topic with its one event). Counted against
/// `history.max_bytes` with the retained events while the topic has no subscriber (it is
/// kept for its history); a topic streams hold is counted apart (`subscribed_bytes`).
pub const TOPIC_OVERHEAD: usize = 320;

#[derive(Default)]
pub struct Topics {
    by_name: HashMap<Rc<str>, TopicId>,
    /// The same names in order, so that `/topics` pages through them with a cursor; the
    /// hash index stays for lookups (the publish path), which a B-tree makes ~1 µs slower
    /// per event among a million topics.
    ordered: BTreeSet<Rc<str>>,
    topics: Slab<Topic>,
    /// The generation the next topic created gets (wrapping: an event waits for its
    /// fan-out one turn at most, far fewer than 2^32 topics are created meanwhile).
    next_generation: u32,
    /// `TOPIC_OVERHEAD` plus the name length of every topic without a subscriber: kept for
    /// its history, final mark or an event not yet committed (`history.max_bytes`).
    kept_bytes: usize,
    /// The same for topics with at least one subscriber: names streams asked for, bounded
    /// by open streams × `streams.max_topics`, never by evicting history.
    subscribed_bytes: usize,
}

impl Topics {
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// What the metadata of topics without a subscriber costs, as counted against
    /// `history.max_bytes`.
    pub fn kept_bytes(&self) -> usize {
        self.kept_bytes
    }

    /// What the metadata of topics held by streams costs (not in `history.max_bytes`).
    pub fn subscribed_bytes(&self) -> usize {
        self.subscribed_bytes
    }

    /// Topics with at least one subscriber.
    #[cfg(test)]
    pub fn subscribed(&self) -> usize {
        self.topics
            .iter()
            .filter(|(_, t)| !t.subscribers.is_empty())
            .count()
    }

    pub fn lookup(&self, name: &str) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    /// Up to `limit` topics whose names start with `prefix`, in name order, after the name
    /// `after` (a cursor: the last name of the previous page). O(log topics + limit).
    pub fn page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<TopicId> {
        use std::ops::Bound;
        let from: Bound<&str> = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        self.ordered
            .range::<str, _>((from, Bound::Unbounded))
            .take_while(|name| name.starts_with(prefix))
            .take(limit)
            .filter_map(|name| self.by_name.get(name).copied())
            .collect()
    }

    /// The topic named `name`, created when first used. A created topic treats resumes from
    /// below `horizon` as not provably complete (`Retained::new`).
    pub fn intern(&mut self, name: &str, horizon: u64) -> TopicId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let name: Rc<str> = name.into();
        self.kept_bytes += TOPIC_OVERHEAD + name.len();
        let generation = self.next_generation;
        self.next_generation = generation.wrapping_add(1);
        let id = self.topics.insert(Topic {
            name: name.clone(),
            generation,
            subscribers: HashSet::default(),
            history: Retained::new(horizon),
        }) as TopicId;
        self.ordered.insert(name.clone());
        self.by_name.insert(name, id);
        id
    }

    pub fn get(&self, id: TopicId) -> &Topic {
        &self.topics[id as usize]
    }

    /// The topic in slot `id`, if any.
    pub fn try_get(&self, id: TopicId) -> Option<&Topic> {
        self.topics.get(id as usize)
    }

    /// How an event names topic `id` (which must exist).
    pub fn reference(&self, id: TopicId) -> TopicRef {
        TopicRef {
            id,
            generation: self.get(id).generation,
        }
    }

    /// The topic an event names, unless it was forgotten since (its slot may hold another
    /// topic by now: then the generation differs).
    pub fn resolve(&self, t: TopicRef) -> Option<&Topic> {
        self.topics
            .get(t.id as usize)
            .filter(|topic| topic.generation == t.generation)
    }

    /// `resolve`, mutably.
    pub fn resolve_mut(&mut self, t: TopicRef) -> Option<&mut Topic> {
        self.topics
            .get_mut(t.id as usize)
            .filter(|topic| topic.generation == t.generation)
    }

    pub fn get_mut(&mut self, id: TopicId) -> &mut Topic {
        &mut self.topics[id as usize]
    }

    pub fn subscribe(&mut self, id: TopicId, conn: ConnKey) {
        let topic = &mut self.topics[id as usize];
        let first = topic.subscribers.is_empty();
        if topic.subscribers.insert(conn) && first {
            // Now held by a stream: its metadata leaves the history account.
            let cost = TOPIC_OVERHEAD + topic.name.len();
            self.kept_bytes -= cost;
            self.subscribed_bytes += cost;
        }
    }

    /// Removes `conn` from `id`; a topic that never had an event and has no subscriber
    /// left is forgotten (the hub forgets topics with a past once they are quiet).
    pub fn unsubscribe(&mut self, id: TopicId, conn: ConnKey) {
        let topic = &mut self.topics[id as usize];
        if topic.subscribers.remove(&conn) && topic.subscribers.is_empty() {
            // Kept from now on only for its history: back into that account.
            let cost = TOPIC_OVERHEAD + topic.name.len();
            self.subscribed_bytes -= cost;
            self.kept_bytes += cost;
        }
        self.forget_if_idle(id);
    }

    /// Forgets a topic that has no subscriber and never had an event (interned by a
    /// request that did not subscribe).
    pub fn forget_if_idle(&mut self, id: TopicId) {
        let topic = self.get(id);
        if topic.subscribers.is_empty() && topic.history.last_id == 0 {
            self.forget(id);
        }
    }

    /// Forgets a topic (only topics without subscribers are forgotten).
    pub fn forget(&mut self, id: TopicId) {
        let topic = self.topics.remove(id as usize);
        debug_assert!(topic.subscribers.is_empty(), "forgot a subscribed topic");
        let cost = TOPIC_OVERHEAD + topic.name.len();
        match topic.subscribers.is_empty() {
            true => self.kept_bytes -= cost,
            false => self.subscribed_bytes -= cost,
        }
        self.by_name.remove(&topic.name);
        self.ordered.remove(&topic.name);
        // Give back what a flood of short-lived topics grew (the slab cannot move its
        // entries, so it only shrinks once empty; the B-tree frees its nodes as it goes).
        if self.by_name.capacity() > 4 * self.by_name.len() + 1024 {
            self.by_name.shrink_to(2 * self.by_name.len());
        }
        if self.topics.is_empty() {
            self.topics.shrink_to_fit();
        }
    }

    pub fn ids(&self) -> Vec<TopicId> {
        self.topics.iter().map(|(id, _)| id as TopicId).collect()
    }
}

impl Histories for Topics {
    fn history(&mut self, topic: TopicId) -> &mut Retained {
        &mut self.get_mut(topic).history
    }
}

/// Hasher for connection keys: they are small slab indices chosen by the server, not by
/// clients, so a multiplicative hash is enough and much cheaper than SipHash.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intern_subscribe_forget() {
        let mut t = Topics::default();
        let a = t.intern("a", 0);
        assert_eq!(t.intern("a", 0), a);
        let b = t.intern("b", 0);
        assert_ne!(a, b);
        t.subscribe(a, 1);
        t.subscribe(a, 2);
        assert_eq!(t.get(a).subscribers.len(), 2);
        t.unsubscribe(a, 1);
        assert_eq!(t.lookup("a"), Some(a));
        t.unsubscribe(a, 2);
        assert_eq!(t.lookup("a"), None, "unused topic forgotten");
        assert_eq!(t.len(), 1);
        assert_eq!(t.kept_bytes(), TOPIC_OVERHEAD + 1);
        t.forget(b);
        assert_eq!(t.kept_bytes(), 0);
    }

    #[test]
    fn subscribed_topics_are_counted_apart_from_kept_ones() {
        let mut t = Topics::default();
        let a = t.intern("aa", 0);
        assert_eq!(
            (t.kept_bytes(), t.subscribed_bytes()),
            (TOPIC_OVERHEAD + 2, 0)
        );
        t.subscribe(a, 1);
        t.subscribe(a, 2);
        assert_eq!(
            (t.kept_bytes(), t.subscribed_bytes()),
            (0, TOPIC_OVERHEAD + 2)
        );
        assert_eq!(t.subscribed(), 1);
        t.get_mut(a).history.last_id = 7; // a past: not forgotten when idle
        t.unsubscribe(a, 1);
        assert_eq!(
            (t.kept_bytes(), t.subscribed_bytes()),
            (0, TOPIC_OVERHEAD + 2)
        );
        t.unsubscribe(a, 2);
        assert_eq!(
            (t.kept_bytes(), t.subscribed_bytes()),
            (TOPIC_OVERHEAD + 2, 0)
        );
        assert_eq!(t.subscribed(), 0);
        t.forget(a);
        assert_eq!((t.kept_bytes(), t.subscribed_bytes()), (0, 0));
    }

    #[test]
    fn a_reused_slot_is_a_different_topic() {
        let mut t = Topics::default();
        let a = t.intern("a", 0);
        let old = t.reference(a);
        t.forget(a);
        let b = t.intern("b", 0);
        assert_eq!(b, a, "the slab reuses the slot");
        assert!(
            t.resolve(old).is_none(),
            "an event of `a` does not find `b`"
        );
        assert_eq!(t.resolve(t.reference(b)).map(|x| &*x.name), Some("b"));
    }

    #[test]
    fn topic_stays_the_size_its_overhead_assumes() {
        assert!(
            std::mem::size_of::<Topic>() <= 136,
            "{}",
            std::mem::size_of::<Topic>()
        );
    }
}
