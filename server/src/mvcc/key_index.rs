//! The history of one key: its generations (a generation runs from a create to a delete) and the
//! revisions inside each. Answers "which revision of this key was visible at revision R" and drops
//! history below a compaction point. Pure data; knows nothing about values or storage.

use smallvec::SmallVec;

/// A point in the store's history: `main` is the revision of the request, `sub` orders the changes
/// a single request (a Txn) makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Generation {
    /// Puts in order, then (if `tombstoned`) the delete.
    revs: Vec<Revision>,
    tombstoned: bool,
}

/// All retained revisions of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyHistory {
    /// Oldest first. Almost every key has one generation: kept inline, a put follows one pointer
    /// (to the revisions) instead of two.
    generations: SmallVec<[Generation; 1]>,
    /// The lease the key's live value is attached to (0: none, or the key is deleted).
    pub lease: i64,
}

/// What a live key looks like at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visible {
    /// The revision holding the key's value.
    pub modified: Revision,
}

impl KeyHistory {
    fn live(&self) -> Option<&Generation> {
        self.generations.last().filter(|g| !g.tombstoned)
    }

    /// Whether the key exists now.
    pub fn is_live(&self) -> bool {
        self.live().is_some()
    }

    /// Records a put at `rev`; returns (create revision, version) of the new value.
    pub fn put(&mut self, rev: Revision) -> (i64, i64) {
        if self.live().is_none() {
            self.generations.push(Generation::default());
        }
        // The line above guarantees a live last generation.
        let g = self
            .generations
            .last_mut()
            .unwrap_or_else(|| unreachable!("a generation was just pushed"));
        g.revs.push(rev);
        (g.revs[0].main, g.revs.len() as i64)
    }

    /// Records a delete at `rev`. Returns false (and changes nothing) if the key is not live.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        match self.generations.last_mut() {
            Some(g) if !g.tombstoned => {
                g.revs.push(rev);
                g.tombstoned = true;
                true
            }
            _ => false,
        }
    }

    /// The revision of the key's value visible at revision `at`, if the key existed then.
    pub fn get(&self, at: i64) -> Option<Visible> {
        for g in self.generations.iter().rev() {
            let Some(first) = g.revs.first() else {
                continue;
            };
            if first.main > at {
                continue;
            }
            let pos = g.revs.partition_point(|r| r.main <= at);
            // pos >= 1 because first.main <= at.
            let r = g.revs[pos - 1];
            if g.tombstoned && pos == g.revs.len() {
                return None;
            }
            return Some(Visible { modified: r });
        }
        None
    }

    /// The newest revision recorded for the key (put or delete).
    pub fn last_revision(&self) -> Option<Revision> {
        self.generations.last().and_then(|g| g.revs.last().copied())
    }

    /// Drops history that no read at a revision >= `at` can see. Revisions that must stay readable
    /// are added to `keep`. Returns true when nothing of the key is left.
    pub fn compact(&mut self, at: i64, keep: &mut impl Extend<Revision>) -> bool {
        // Generations that ended (were deleted) at or before `at` are invisible from `at` on.
        self.generations
            .retain(|g| !(g.tombstoned && g.revs.last().is_some_and(|r| r.main <= at)));
        if let Some(g) = self.generations.first_mut() {
            let pos = g.revs.partition_point(|r| r.main <= at);
            if pos > 0 {
                keep.extend(std::iter::once(g.revs[pos - 1]));
                g.revs.drain(..pos - 1);
            }
        }
        self.generations.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// put@2 put@3 del@5 put@7 — the history used by the table-driven tests below.
    fn sample() -> KeyHistory {
        let mut h = KeyHistory::default();
        assert_eq!(h.put(r(2)), (2, 1));
        assert_eq!(h.put(r(3)), (2, 2));
        assert!(h.tombstone(r(5)));
        assert!(!h.tombstone(r(6)), "deleting a deleted key is a no-op");
        assert_eq!(h.put(r(7)), (7, 1));
        h
    }

    #[test]
    fn get_at_revision() {
        let h = sample();
        let cases: &[(i64, Option<i64>)] = &[
            (1, None),
            (2, Some(2)),
            (3, Some(3)),
            (4, Some(3)),
            (5, None),
            (6, None),
            (7, Some(7)),
            (100, Some(7)),
        ];
        for &(at, want) in cases {
            assert_eq!(h.get(at).map(|v| v.modified.main), want, "at {at}");
        }
        assert!(h.is_live());
    }

    #[test]
    fn compact_keeps_what_later_reads_see() {
        // (compact at, revisions kept, (read at, visible revision))
        type Case<'a> = (i64, &'a [i64], &'a [(i64, Option<i64>)]);
        let cases: &[Case<'_>] = &[
            (
                2,
                &[2],
                &[(2, Some(2)), (3, Some(3)), (5, None), (7, Some(7))],
            ),
            (4, &[3], &[(4, Some(3)), (5, None), (7, Some(7))]),
            // The whole first generation ended at 5: nothing of it is needed from 5 on.
            (5, &[], &[(5, None), (6, None), (7, Some(7))]),
            (7, &[7], &[(7, Some(7)), (9, Some(7))]),
        ];
        for &(at, kept, reads) in cases {
            let mut h = sample();
            let mut keep = Vec::new();
            assert!(!h.compact(at, &mut keep), "at {at}");
            assert_eq!(
                keep.iter().map(|r| r.main).collect::<Vec<_>>(),
                kept,
                "at {at}"
            );
            for &(read, want) in reads {
                assert_eq!(
                    h.get(read).map(|v| v.modified.main),
                    want,
                    "compact {at} read {read}"
                );
            }
        }
    }

    #[test]
    fn compact_removes_deleted_key_entirely() {
        let mut h = KeyHistory::default();
        h.put(r(2));
        h.tombstone(r(3));
        let mut keep = Vec::new();
        assert!(!h.compact(2, &mut keep));
        assert_eq!(keep, vec![r(2)]);
        assert!(h.compact(3, &mut keep));
    }

    #[test]
    fn versions_restart_after_delete() {
        let mut h = KeyHistory::default();
        assert_eq!(h.put(r(2)), (2, 1));
        assert_eq!(h.put(r(4)), (2, 2));
        h.tombstone(r(6));
        assert_eq!(h.put(r(8)), (8, 1));
        assert_eq!(h.put(r(9)), (8, 2));
    }
}
