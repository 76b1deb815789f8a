//! The topic registry: name ↔ `TopicId`, each topic's subscribers (connection keys) and its
//! retained history. Owns who is subscribed to what; never writes to a socket (fan-out
//! queues frames through `fanout`, the event loop writes).

use crate::history::{Histories, Retained, TopicId};
use slab::Slab;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// A connection's slab key, as stored in subscriber sets (u32 keeps the sets small).
pub type ConnKey = u32;

pub struct Topic {
    /// Shared with the name index: one allocation per topic name.
    pub name: Rc<str>,
    pub subscribers: HashSet<ConnKey, BuildHasherDefault<KeyHasher>>,
    pub history: Retained,
}

/// Bookkeeping of one topic beyond its name bytes, counted against `history.max_bytes`
/// with the retained events: the `Topic` in the slab (136 bytes, up to twice that with
/// growth), its name-index entry (~40 with hashbrown's load factor and growth) and the
/// name's `Rc` header and malloc rounding (~32). Measured with a million unique topics:
/// bench-results/2026-11-28-issue16-data-safety.md.
pub const TOPIC_OVERHEAD: usize = 320;

#[derive(Default)]
pub struct Topics {
    by_name: HashMap<Rc<str>, TopicId>,
    topics: Slab<Topic>,
    /// `TOPIC_OVERHEAD` plus the name length of every topic.
    bytes: usize,
}

impl Topics {
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// What the topics' metadata costs, as counted against `history.max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn lookup(&self, name: &str) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    /// The topic named `name`, created when first used. A created topic treats resumes from
    /// below `horizon` as not provably complete (`Retained::new`).
    pub fn intern(&mut self, name: &str, horizon: u64) -> TopicId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let name: Rc<str> = name.into();
        self.bytes += TOPIC_OVERHEAD + name.len();
        let id = self.topics.insert(Topic {
            name: name.clone(),
            subscribers: HashSet::default(),
            history: Retained::new(horizon),
        }) as TopicId;
        self.by_name.insert(name, id);
        id
    }

    pub fn get(&self, id: TopicId) -> &Topic {
        &self.topics[id as usize]
    }

    /// The topic, unless it was forgotten.
    pub fn try_get(&self, id: TopicId) -> Option<&Topic> {
        self.topics.get(id as usize)
    }

    pub fn get_mut(&mut self, id: TopicId) -> &mut Topic {
        &mut self.topics[id as usize]
    }

    pub fn subscribe(&mut self, id: TopicId, conn: ConnKey) {
        self.get_mut(id).subscribers.insert(conn);
    }

    /// Removes `conn` from `id`; a topic that never had an event and has no subscriber
    /// left is forgotten (topics with a past are forgotten by `Hub::prune`).
    pub fn unsubscribe(&mut self, id: TopicId, conn: ConnKey) {
        self.get_mut(id).subscribers.remove(&conn);
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

    pub fn forget(&mut self, id: TopicId) {
        let topic = self.topics.remove(id as usize);
        self.bytes -= TOPIC_OVERHEAD + topic.name.len();
        self.by_name.remove(&topic.name);
        // Give back what a flood of short-lived topics grew (the slab cannot move its
        // entries, so it only shrinks once empty).
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
        assert_eq!(t.bytes(), TOPIC_OVERHEAD + 1);
        t.forget(b);
        assert_eq!(t.bytes(), 0);
    }

    #[test]
    fn topic_stays_the_size_its_overhead_assumes() {
        assert!(std::mem::size_of::<Topic>() <= 136);
    }
}
