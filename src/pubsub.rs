//! The topic registry: name ↔ `TopicId`, each topic's subscribers (connection keys) and its
//! retained history. Owns who is subscribed to what; never writes to a socket (fan-out
//! queues frames through `fanout`, the event loop writes).

use crate::history::{Histories, Retained, TopicId};
use slab::Slab;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A connection's slab key, as stored in subscriber sets (u32 keeps the sets small).
pub type ConnKey = u32;

pub struct Topic {
    pub name: Box<str>,
    pub subscribers: HashSet<ConnKey, BuildHasherDefault<KeyHasher>>,
    pub history: Retained,
}

#[derive(Default)]
pub struct Topics {
    by_name: HashMap<Box<str>, TopicId>,
    topics: Slab<Topic>,
}

impl Topics {
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    pub fn lookup(&self, name: &str) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    /// The topic named `name`, created when first used.
    pub fn intern(&mut self, name: &str) -> TopicId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.topics.insert(Topic {
            name: name.into(),
            subscribers: HashSet::default(),
            history: Retained::default(),
        }) as TopicId;
        self.by_name.insert(name.into(), id);
        id
    }

    pub fn get(&self, id: TopicId) -> &Topic {
        &self.topics[id as usize]
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
        self.by_name.remove(&topic.name);
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
        let a = t.intern("a");
        assert_eq!(t.intern("a"), a);
        let b = t.intern("b");
        assert_ne!(a, b);
        t.subscribe(a, 1);
        t.subscribe(a, 2);
        assert_eq!(t.get(a).subscribers.len(), 2);
        t.unsubscribe(a, 1);
        assert_eq!(t.lookup("a"), Some(a));
        t.unsubscribe(a, 2);
        assert_eq!(t.lookup("a"), None, "unused topic forgotten");
        assert_eq!(t.len(), 1);
    }
}
