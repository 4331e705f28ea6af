//! A bounded table of short-lived entries (authorization codes, device
//! codes, user codes): O(1) insert, lookup and removal, expired entries
//! dropped in insertion order (every entry of one table lives equally long,
//! so the oldest is always at the front).
//!
//! Must not import: http, store, lease, policy, connections.

use std::collections::{HashMap, VecDeque};

/// The table is at its cap: refuse, do not grow.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

pub struct Table<V> {
    map: HashMap<String, (u64, V)>,
    /// (drop time, key) in insertion order. An entry removed early stays
    /// here until its drop time: the cap counts these too, so a flood of
    /// create-and-use cannot grow the queue either.
    order: VecDeque<(u64, String)>,
    cap: usize,
}

impl<V> Table<V> {
    pub fn new(cap: usize) -> Self {
        Table { map: HashMap::new(), order: VecDeque::new(), cap }
    }

    /// Drops every entry whose drop time has come. Amortised O(1): each
    /// entry is pushed and popped once.
    pub fn purge(&mut self, now_ms: u64) {
        while let Some((at, _)) = self.order.front() {
            if *at > now_ms {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                if self.map.get(&key).is_some_and(|(t, _)| *t <= now_ms) {
                    self.map.remove(&key);
                }
            }
        }
    }

    /// Adds `value` under `key` until `drop_at_ms`, unless the table holds
    /// `cap` entries created and not yet dropped.
    pub fn insert(&mut self, now_ms: u64, key: String, value: V, drop_at_ms: u64) -> Result<(), Full> {
        self.purge(now_ms);
        if self.order.len() >= self.cap || self.map.contains_key(&key) {
            return Err(Full);
        }
        self.order.push_back((drop_at_ms, key.clone()));
        self.map.insert(key, (drop_at_ms, value));
        Ok(())
    }

    pub fn contains(&mut self, now_ms: u64, key: &str) -> bool {
        self.purge(now_ms);
        self.map.contains_key(key)
    }

    pub fn get_mut(&mut self, now_ms: u64, key: &str) -> Option<&mut V> {
        self.purge(now_ms);
        self.map.get_mut(key).map(|(_, v)| v)
    }

    pub fn remove(&mut self, now_ms: u64, key: &str) -> Option<V> {
        self.purge(now_ms);
        self.map.remove(key).map(|(_, v)| v)
    }

    /// Entries held (live ones) and slots in use (towards the cap).
    pub fn len(&self) -> (usize, usize) {
        (self.map.len(), self.order.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_and_expiring() {
        let mut t = Table::new(2);
        t.insert(0, "a".into(), 1, 10).unwrap();
        t.insert(1, "b".into(), 2, 11).unwrap();
        assert_eq!(t.insert(2, "c".into(), 3, 12), Err(Full));
        // A removed entry still holds its slot until its drop time.
        assert_eq!(t.remove(3, "a"), Some(1));
        assert_eq!(t.insert(4, "c".into(), 3, 14), Err(Full));
        assert_eq!(t.insert(10, "c".into(), 3, 20), Ok(()));
        assert!(!t.contains(11, "b"), "b dropped at 11");
        assert_eq!(t.get_mut(19, "c").copied(), Some(3));
        assert_eq!(t.get_mut(20, "c"), None);
        assert_eq!(t.len(), (0, 0));
        // A duplicate key is refused, never overwritten.
        t.insert(30, "d".into(), 4, 40).unwrap();
        assert_eq!(t.insert(30, "d".into(), 5, 40), Err(Full));
        assert_eq!(t.get_mut(30, "d").copied(), Some(4));
    }
}
