//! A map that successive versions of the routing table share: a version
//! is a shared base plus the few changes made since it was last merged, so
//! a reload that changes one plugin among thousands copies the changes,
//! not the map, and freeing the replaced table frees only those.
//!
//! The changes are merged into a new base once they outgrow
//! [`MERGE_AT_LEAST`] plus a sixteenth of the base, so a lookup's extra
//! cost (one probe into the changes, skipped while there are none) and a
//! copy's stay bounded, and the merge's cost is spread over the reloads
//! that made the changes.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// Changes kept beside the base before a merge, at the least.
pub const MERGE_AT_LEAST: usize = 64;

/// A map of `K` to `V` whose copies share their base.
#[derive(Debug)]
pub struct SharedIndex<K, V> {
    base: Arc<HashMap<K, V>>,
    /// Keys set (`Some`) or removed (`None`) since the base.
    changes: HashMap<K, Option<V>>,
}

impl<K, V> Default for SharedIndex<K, V> {
    fn default() -> Self {
        Self {
            base: Arc::default(),
            changes: HashMap::new(),
        }
    }
}

impl<K: Clone, V: Clone> Clone for SharedIndex<K, V> {
    fn clone(&self) -> Self {
        Self {
            base: self.base.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SharedIndex<K, V> {
    /// The key and value for `key`, if any.
    pub fn get_key_value<Q>(&self, key: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.changes.is_empty()
            && let Some((k, change)) = self.changes.get_key_value(key)
        {
            return change.as_ref().map(|v| (k, v));
        }
        self.base.get_key_value(key)
    }

    /// The value for `key`, if any.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_key_value(key).map(|(_, v)| v)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: K, value: V) {
        self.changes.insert(key, Some(value));
        self.merge_if_large();
    }

    /// Removes `key`.
    pub fn remove<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.base.get_key_value(key) {
            Some((k, _)) => {
                self.changes.insert(k.clone(), None);
                self.merge_if_large();
            }
            None => {
                self.changes.remove(key);
            }
        }
    }

    /// The number of changes kept beside the base (for tests).
    pub fn pending_changes(&self) -> usize {
        self.changes.len()
    }

    fn merge_if_large(&mut self) {
        if self.changes.len() <= MERGE_AT_LEAST + self.base.len() / 16 {
            return;
        }
        let mut base = HashMap::clone(&self.base);
        for (key, change) in self.changes.drain() {
            match change {
                Some(value) => base.insert(key, value),
                None => base.remove(&key),
            };
        }
        self.base = Arc::new(base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_the_base_and_see_only_their_own_changes() {
        let mut first: SharedIndex<String, u32> = SharedIndex::default();
        for i in 0..1000 {
            first.insert(format!("k{i}"), i);
        }
        // A thousand inserts merged as they came: few changes remain.
        assert!(first.pending_changes() <= MERGE_AT_LEAST + 1000 / 16);
        let mut second = first.clone();
        second.insert("k5".to_string(), 5_000);
        second.remove("k6");
        second.remove("absent");
        second.insert("new".to_string(), 7);
        assert_eq!(first.get("k5"), Some(&5));
        assert_eq!(first.get("k6"), Some(&6));
        assert!(!first.contains_key("new"));
        assert_eq!(second.get("k5"), Some(&5_000));
        assert_eq!(second.get("k6"), None);
        assert_eq!(second.get("new"), Some(&7));
        assert_eq!(second.get("k999"), Some(&999));
        // Removing a key only set in the changes leaves nothing behind.
        second.remove("new");
        assert!(!second.contains_key("new"));
        assert_eq!(second.get_key_value("k1"), Some((&"k1".to_string(), &1)));
    }

    #[test]
    fn changes_merge_into_a_new_base_without_touching_other_copies() {
        let mut index: SharedIndex<u32, u32> = SharedIndex::default();
        for i in 0..160 {
            index.insert(i, i);
        }
        let before = index.clone();
        for i in 0..160 {
            index.remove(&i);
            index.insert(i + 1000, i);
        }
        assert!(index.pending_changes() <= MERGE_AT_LEAST + 160 / 16);
        assert!((0..160).all(|i| !index.contains_key(&i) && index.get(&(i + 1000)) == Some(&i)));
        assert!((0..160).all(|i| before.get(&i) == Some(&i) && !before.contains_key(&(i + 1000))));
    }
}
