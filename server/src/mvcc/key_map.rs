//! The histories of all keys, by key. A point lookup (every put, delete of one key and single-key
//! range) goes through a hash table: a few memory accesses, where a search of an ordered tree of
//! a hundred thousand keys missed the cache at every level (with the revision bookkeeping, ~13%
//! of a member's CPU per put).
//! Ordered scans walk a sorted set of the same keys. Short keys are stored inline, so comparing
//! one follows no pointer; longer ones are shared between the set and the table, not copied.
//!
//! Contract: the set and the table always hold the same keys.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::Arc;

use super::key_index::KeyHistory;

/// Longest key kept inline: with the length and the variant's tag, as large as a shared pointer.
const INLINE: usize = 22;

/// A key's bytes. Equality, order and hash are those of the bytes, so `&[u8]` looks keys up.
#[derive(Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<[u8]>),
}

impl Key {
    fn new(key: &[u8]) -> Key {
        if key.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Shared(Arc::from(key))
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..*len as usize],
            Key::Shared(b) => b,
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

#[derive(Default)]
pub(super) struct KeyMap {
    histories: HashMap<Key, KeyHistory>,
    order: BTreeSet<Key>,
}

impl KeyMap {
    pub fn get(&self, key: &[u8]) -> Option<&KeyHistory> {
        self.histories.get(key)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut KeyHistory> {
        self.histories.get_mut(key)
    }

    /// The history of `key`, created empty if the key has none.
    pub fn entry(&mut self, key: &[u8]) -> &mut KeyHistory {
        if !self.histories.contains_key(key) {
            let key = Key::new(key);
            self.order.insert(key.clone());
            self.histories.insert(key, KeyHistory::default());
        }
        // Inserted just above when missing.
        self.histories
            .get_mut(key)
            .unwrap_or_else(|| unreachable!("the key was just inserted"))
    }

    /// The keys within `bounds` and their histories, in key order.
    pub fn range<'a>(
        &'a self,
        bounds: (Bound<&'a [u8]>, Bound<&'a [u8]>),
    ) -> impl Iterator<Item = (&'a [u8], &'a KeyHistory)> + 'a {
        // A single key is looked up, not searched for in the set.
        let point = match bounds {
            (Bound::Included(a), Bound::Included(b)) if a == b => Some(a),
            _ => None,
        };
        let walk = point
            .is_none()
            .then(|| self.order.range::<[u8], _>(bounds).map(Key::as_bytes));
        point
            .into_iter()
            .chain(walk.into_iter().flatten())
            .filter_map(|k| self.histories.get_key_value(k))
            .map(|(k, h)| (k.as_bytes(), h))
    }

    /// Every key and its history, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &KeyHistory)> {
        self.histories.iter().map(|(k, h)| (k.as_bytes(), h))
    }

    /// Keeps the keys for which `keep` returns true (it may change their histories).
    pub fn retain(&mut self, mut keep: impl FnMut(&mut KeyHistory) -> bool) {
        let order = &mut self.order;
        self.histories.retain(|k, h| {
            let kept = keep(h);
            if !kept {
                order.remove(k);
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::Revision;

    fn map(keys: &[&str]) -> KeyMap {
        let mut m = KeyMap::default();
        for (i, k) in keys.iter().enumerate() {
            m.entry(k.as_bytes()).put(Revision::new(i as i64 + 2, 0));
        }
        m
    }

    fn keys_in(m: &KeyMap, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Vec<String> {
        m.range((lo, hi))
            .map(|(k, _)| String::from_utf8(k.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn ranges_are_in_key_order_and_points_are_found() {
        let m = map(&["c", "a", "d", "b"]);
        let all = keys_in(&m, Bound::Unbounded, Bound::Unbounded);
        assert_eq!(all, ["a", "b", "c", "d"]);
        assert_eq!(
            keys_in(&m, Bound::Included(b"b"), Bound::Excluded(b"d")),
            ["b", "c"]
        );
        assert_eq!(
            keys_in(&m, Bound::Included(b"c"), Bound::Included(b"c")),
            ["c"]
        );
        assert!(keys_in(&m, Bound::Included(b"e"), Bound::Included(b"e")).is_empty());
        assert_eq!(
            m.get(b"d").unwrap().last_revision(),
            Some(Revision::new(4, 0))
        );
        assert!(m.get(b"e").is_none());
    }

    #[test]
    fn short_and_long_keys_compare_hash_and_order_as_bytes() {
        let long = [b'x'; 40];
        let mut m = map(&["b", "a"]);
        m.entry(&long).put(Revision::new(9, 0));
        m.entry(&[b'x'; INLINE]).put(Revision::new(10, 0));
        assert_eq!(
            m.get(&long).unwrap().last_revision(),
            Some(Revision::new(9, 0))
        );
        let order: Vec<Vec<u8>> = m
            .range((Bound::Unbounded, Bound::Unbounded))
            .map(|(k, _)| k.to_vec())
            .collect();
        assert_eq!(
            order,
            vec![
                b"a".to_vec(),
                b"b".to_vec(),
                vec![b'x'; INLINE],
                long.to_vec()
            ]
        );
        assert!(matches!(Key::new(&[b'x'; INLINE]), Key::Inline { .. }));
        assert!(matches!(Key::new(&long), Key::Shared(_)));
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }

    #[test]
    fn entry_reuses_existing_history_and_retain_drops_from_both() {
        let mut m = map(&["a", "b"]);
        m.entry(b"a").put(Revision::new(10, 0));
        assert_eq!(
            m.get(b"a").unwrap().last_revision(),
            Some(Revision::new(10, 0))
        );
        assert_eq!(m.iter().count(), 2);
        m.retain(|h| h.last_revision() != Some(Revision::new(10, 0)));
        assert!(m.get(b"a").is_none());
        assert_eq!(keys_in(&m, Bound::Unbounded, Bound::Unbounded), ["b"]);
        assert!(m.get_mut(b"b").is_some());
    }
}
