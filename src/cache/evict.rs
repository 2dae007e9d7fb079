//! SIEVE eviction (Zhang et al., NSDI 2024), weighted by bytes: one queue, a "visited" bit set
//! on each hit, and a hand that walks from the oldest entry towards the newest, giving visited
//! entries another round and evicting the first unvisited one. It keeps popular objects
//! without moving anything on a hit (a hit is one bit), and on skewed web traffic it keeps a
//! higher hit ratio than LRU (see `examples/cache_hit_ratio.rs`).

use std::collections::HashMap;
use std::hash::Hash;

const NIL: usize = usize::MAX;

struct Node<K> {
    key: K,
    weight: u64,
    visited: bool,
    /// Towards the newest entry.
    newer: usize,
    /// Towards the oldest entry.
    older: usize,
}

pub struct Sieve<K> {
    nodes: Vec<Node<K>>,
    free: Vec<usize>,
    index: HashMap<K, usize>,
    newest: usize,
    oldest: usize,
    hand: usize,
    weight: u64,
}

impl<K: Hash + Eq + Clone> Default for Sieve<K> {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            newest: NIL,
            oldest: NIL,
            hand: NIL,
            weight: 0,
        }
    }
}

impl<K: Hash + Eq + Clone> Sieve<K> {
    /// Total weight of the entries held.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Adds `key` as the newest entry (replacing it if present).
    pub fn insert(&mut self, key: K, weight: u64) {
        self.remove(&key);
        let node = Node {
            key: key.clone(),
            weight,
            visited: false,
            newer: NIL,
            older: self.newest,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        if self.newest != NIL {
            self.nodes[self.newest].newer = i;
        }
        self.newest = i;
        if self.oldest == NIL {
            self.oldest = i;
        }
        self.index.insert(key, i);
        self.weight += weight;
    }

    /// A hit: marks `key` visited. `false` when it is not held.
    pub fn touch(&mut self, key: &K) -> bool {
        match self.index.get(key) {
            Some(&i) => {
                self.nodes[i].visited = true;
                true
            }
            None => false,
        }
    }

    /// Removes `key`; returns its weight.
    pub fn remove(&mut self, key: &K) -> Option<u64> {
        let i = self.index.remove(key)?;
        let (newer, older, weight) = {
            let n = &self.nodes[i];
            (n.newer, n.older, n.weight)
        };
        if self.hand == i {
            self.hand = newer;
        }
        match newer {
            NIL => self.newest = older,
            n => self.nodes[n].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.nodes[o].newer = newer,
        }
        self.free.push(i);
        self.weight -= weight;
        Some(weight)
    }

    /// Picks the next victim and removes it; `None` when empty.
    pub fn evict(&mut self) -> Option<(K, u64)> {
        if self.index.is_empty() {
            return None;
        }
        let mut i = if self.hand == NIL {
            self.oldest
        } else {
            self.hand
        };
        // Bounded: every visited entry passed is cleared, so the second lap finds a victim.
        for _ in 0..=2 * self.index.len() {
            if !self.nodes[i].visited {
                break;
            }
            self.nodes[i].visited = false;
            i = match self.nodes[i].newer {
                NIL => self.oldest,
                n => n,
            };
        }
        let key = self.nodes[i].key.clone();
        self.hand = self.nodes[i].newer;
        let weight = self.remove(&key)?;
        Some((key, weight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unvisited_oldest_goes_first_visited_get_another_round() {
        let mut s = Sieve::default();
        for k in 1..=4 {
            s.insert(k, 10);
        }
        assert_eq!(s.weight(), 40);
        s.touch(&1);
        s.touch(&3);
        assert_eq!(s.evict(), Some((2, 10)), "1 was visited, so 2 goes");
        assert_eq!(
            s.evict(),
            Some((4, 10)),
            "the hand moves on from 2; 3 was visited"
        );
        // 1 and 3 had their bits cleared on the way: now they go in order.
        assert_eq!(s.evict(), Some((1, 10)));
        assert_eq!(s.evict(), Some((3, 10)));
        assert_eq!(s.evict(), None);
        assert_eq!((s.weight(), s.len()), (0, 0));
    }

    #[test]
    fn replace_and_remove_keep_weights_right() {
        let mut s = Sieve::default();
        s.insert("a", 5);
        s.insert("b", 7);
        s.insert("a", 9);
        assert_eq!((s.weight(), s.len()), (16, 2));
        assert_eq!(s.remove(&"b"), Some(7));
        assert_eq!(s.remove(&"b"), None);
        assert_eq!(s.evict(), Some(("a", 9)));
        assert!(s.is_empty());
        // Slots are reused.
        for k in ["x", "y", "z"] {
            s.insert(k, 1);
        }
        assert!(s.nodes.len() <= 3);
    }

    #[test]
    fn all_visited_still_evicts() {
        let mut s = Sieve::default();
        for k in 0..100 {
            s.insert(k, 1);
            s.touch(&k);
        }
        let (victim, _) = s.evict().unwrap();
        assert_eq!(victim, 0);
        assert_eq!(s.len(), 99);
    }
}
