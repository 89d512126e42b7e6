//! [`Memory`]: a map from change hash to a value that keeps only its newest entries, for
//! what the replica remembers per change (ack routes, awaited acks, relayed acks) without
//! growing without bound.

use std::collections::{HashMap, VecDeque};

use automerge::ChangeHash;

/// A bounded map that forgets its oldest entries.
pub(crate) struct Memory<V> {
    map: HashMap<ChangeHash, V>,
    order: VecDeque<ChangeHash>,
    cap: usize,
}

impl<V> Memory<V> {
    pub(crate) fn new(cap: usize) -> Self {
        Memory {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }
    pub(crate) fn insert(&mut self, k: ChangeHash, v: V) {
        if self.map.insert(k, v).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
    pub(crate) fn get(&self, k: &ChangeHash) -> Option<&V> {
        self.map.get(k)
    }
    pub(crate) fn get_mut(&mut self, k: &ChangeHash) -> Option<&mut V> {
        self.map.get_mut(k)
    }
}
