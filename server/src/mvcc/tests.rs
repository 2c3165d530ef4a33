//! Store-level tests: etcd's revision arithmetic through real redb transactions.

use super::*;

/// A store in a temporary database (also used by `kv_ops` tests).
pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) db: crate::storage::Db,
    pub(crate) store: Store,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open(dir.path()).unwrap();
        let store = Store::open(db.clone()).unwrap();
        Fixture {
            _dir: dir,
            db,
            store,
        }
    }

    /// Runs one request's changes in their own transaction, commits, publishes; returns what `f`
    /// returned.
    pub(crate) fn apply<T>(&self, f: impl FnOnce(&mut Writer<'_, '_>) -> T) -> T {
        let txn = self.db.begin_write().unwrap();
        let (out, rev) = {
            let mut w = self.store.writer(&txn).unwrap();
            let out = f(&mut w);
            (out, w.finish().revision)
        };
        txn.commit().unwrap();
        self.store.publish(rev);
        out
    }

    /// Like `apply`, returning the store revision after the request.
    fn write(&self, f: impl FnOnce(&mut Writer<'_, '_>)) -> i64 {
        self.apply(f);
        self.store.revision()
    }

    fn put(&self, k: &str, v: &str) -> i64 {
        self.write(|w| {
            w.put(k.as_bytes(), v.as_bytes().to_vec(), 0).unwrap();
        })
    }

    fn get_at(&self, k: &str, rev: i64) -> MvccResult<Option<KeyValue>> {
        let r = self.store.range(
            KeyRange::new(k.as_bytes(), b""),
            RangeOptions {
                revision: rev,
                ..Default::default()
            },
        )?;
        Ok(r.kvs.into_iter().next())
    }

    fn keys(&self, key: &str, end: &[u8], opts: RangeOptions) -> (Vec<String>, usize) {
        let r = self
            .store
            .range(KeyRange::new(key.as_bytes(), end), opts)
            .unwrap();
        (
            r.kvs
                .iter()
                .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
                .collect(),
            r.count,
        )
    }
}

#[test]
fn empty_store_starts_at_revision_one() {
    let f = Fixture::new();
    assert_eq!(f.store.revision(), 1);
    assert_eq!(f.put("a", "1"), 2);
}

#[test]
fn put_tracks_create_mod_version() {
    let f = Fixture::new();
    f.put("a", "1");
    f.put("a", "2");
    let kv = f.get_at("a", 0).unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(kv.value, b"2");
    // Delete resets version; a new create starts a new generation.
    f.write(|w| {
        w.delete_range(KeyRange::new(b"a", b"")).unwrap();
    });
    assert_eq!(f.get_at("a", 0).unwrap(), None);
    f.put("a", "3");
    let kv = f.get_at("a", 0).unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // The past is still readable.
    assert_eq!(f.get_at("a", 2).unwrap().unwrap().value, b"1");
    assert_eq!(f.get_at("a", 4).unwrap(), None);
}

#[test]
fn one_revision_per_request_with_sub_revisions() {
    let f = Fixture::new();
    let rev = f.write(|w| {
        w.put(b"x", b"1".to_vec(), 0).unwrap();
        w.put(b"y", b"2".to_vec(), 0).unwrap();
        // The request reads its own writes.
        assert_eq!(w.get(b"x").unwrap().unwrap().value, b"1");
    });
    assert_eq!(rev, 2);
    assert_eq!(f.get_at("y", 0).unwrap().unwrap().mod_revision, 2);
}

#[test]
fn delete_of_nothing_makes_no_revision() {
    let f = Fixture::new();
    f.put("a", "1");
    let rev = f.write(|w| {
        assert!(
            w.delete_range(KeyRange::new(b"zzz", b""))
                .unwrap()
                .is_empty()
        );
    });
    assert_eq!(rev, 2);
}

#[test]
fn range_bounds_limit_and_count() {
    let f = Fixture::new();
    for k in ["a", "b", "c", "d"] {
        f.put(k, k);
    }
    let all = RangeOptions::default();
    // (key, end, limit, keys, count)
    type Case<'a> = (&'a str, &'a [u8], usize, &'a [&'a str], usize);
    let cases: &[Case<'_>] = &[
        ("b", b"", 0, &["b"], 1),
        ("b", b"d", 0, &["b", "c"], 2),
        ("b", b"\0", 0, &["b", "c", "d"], 3),
        ("\0", b"\0", 0, &["a", "b", "c", "d"], 4),
        ("a", b"\0", 2, &["a", "b"], 4),
        ("d", b"b", 0, &[], 0),
        ("zz", b"", 0, &[], 0),
    ];
    for &(key, end, limit, want, count) in cases {
        let (keys, n) = f.keys(key, end, RangeOptions { limit, ..all });
        assert_eq!(keys, want, "{key}..{end:?}");
        assert_eq!(n, count, "{key}..{end:?}");
    }
    let (keys, n) = f.keys(
        "a",
        b"\0",
        RangeOptions {
            count_only: true,
            ..all
        },
    );
    assert!(keys.is_empty());
    assert_eq!(n, 4);
}

#[test]
fn compaction_rules() {
    let f = Fixture::new();
    f.put("a", "1"); // 2
    f.put("a", "2"); // 3
    f.put("b", "1"); // 4
    f.write(|w| {
        w.delete_range(KeyRange::new(b"b", b"")).unwrap();
    }); // 5
    f.write(|w| w.compact(3).unwrap());
    assert!(matches!(f.get_at("a", 2), Err(MvccError::Compacted)));
    assert_eq!(f.get_at("a", 3).unwrap().unwrap().value, b"2");
    assert_eq!(f.get_at("b", 4).unwrap().unwrap().value, b"1");
    assert!(matches!(f.get_at("a", 6), Err(MvccError::FutureRevision)));
    // Compacting at or below the compaction point, or in the future, is refused.
    let txn = f.db.begin_write().unwrap();
    {
        let mut w = f.store.writer(&txn).unwrap();
        assert!(matches!(w.compact(3), Err(MvccError::Compacted)));
        assert!(matches!(w.compact(9), Err(MvccError::FutureRevision)));
    }
    drop(txn);
    f.write(|w| w.compact(5).unwrap());
    assert_eq!(f.get_at("b", 5).unwrap(), None);
    assert_eq!(f.store.compacted_revision(), 5);
}

#[test]
fn reopen_rebuilds_index_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = crate::storage::open(dir.path()).unwrap();
        let f = Fixture {
            _dir: tempfile::tempdir().unwrap(),
            db: db.clone(),
            store: Store::open(db).unwrap(),
        };
        f.put("a", "1");
        f.put("b", "2");
        f.write(|w| {
            w.delete_range(KeyRange::new(b"a", b"")).unwrap();
        });
        f.write(|w| w.compact(4).unwrap());
    }
    let db = crate::storage::open(dir.path()).unwrap();
    let store = Store::open(db).unwrap();
    assert_eq!(store.revision(), 4);
    assert_eq!(store.compacted_revision(), 4);
    let r = store
        .range(KeyRange::new(b"\0", b"\0"), RangeOptions::default())
        .unwrap();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.kvs[0].key, b"b");
}

#[test]
fn revision_never_decreases_after_compacting_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = crate::storage::open(dir.path()).unwrap();
        let f = Fixture {
            _dir: tempfile::tempdir().unwrap(),
            db: db.clone(),
            store: Store::open(db).unwrap(),
        };
        f.put("a", "1");
        f.write(|w| {
            w.delete_range(KeyRange::new(b"a", b"")).unwrap();
        });
        f.write(|w| w.compact(3).unwrap());
    }
    let store = Store::open(crate::storage::open(dir.path()).unwrap()).unwrap();
    assert_eq!(store.revision(), 3);
}

#[test]
fn stored_bytes_grow_with_history_shrink_with_compaction_and_survive_a_reload() {
    let f = Fixture::new();
    assert_eq!(f.store.stored_bytes(), 0);
    for i in 0..10 {
        f.apply(|w| w.put(b"k", vec![0u8; 100 + i], 0).unwrap());
    }
    let full = f.store.stored_bytes();
    assert!(full > 10 * 116, "{full}");
    f.apply(|w| w.delete_range(KeyRange::new(b"k", b"")).unwrap());
    let with_tombstone = f.store.stored_bytes();
    assert!(with_tombstone > full);
    let rev = f.store.revision();
    f.apply(|w| w.compact(rev).unwrap());
    // Compaction at the delete drops every row of the key, tombstone included.
    assert_eq!(f.store.stored_bytes(), 0);
    f.apply(|w| w.put(b"j", b"v".to_vec(), 0).unwrap());
    let after = f.store.stored_bytes();
    let reloaded = Store::open(f.db.clone()).unwrap();
    assert_eq!(reloaded.stored_bytes(), after, "rebuilt from the table");
}

/// Apply keeps one writer for a whole batch of requests: each request gets the next revision,
/// sees the ones before it, and readers see none of it until the batch is committed and published.
#[test]
fn one_writer_serves_a_batch_of_requests() {
    let f = Fixture::new();
    f.put("a", "0");
    let txn = f.db.begin_write().unwrap();
    let mut w = f.store.writer(&txn).unwrap();

    w.put(b"a", b"1".to_vec(), 0).unwrap();
    w.put(b"b", b"1".to_vec(), 0).unwrap();
    let first = w.finish();
    assert_eq!(first.revision, 3);
    assert_eq!(first.events.len(), 2);

    // A request that writes nothing leaves the revision alone.
    assert_eq!(w.finish().revision, 3);

    let deleted = w.delete_range(KeyRange::new(b"b", b"")).unwrap();
    assert_eq!(deleted.len(), 1);
    assert_eq!(w.get(b"a").unwrap().unwrap().version, 2);
    let second = w.finish();
    assert_eq!(second.revision, 4);
    assert_eq!(second.events.len(), 1);
    assert_eq!(second.events[0].r#type, EventType::Delete as i32);

    w.put(b"a", b"2".to_vec(), 0).unwrap();
    assert_eq!(w.get(b"a").unwrap().unwrap().mod_revision, 5);
    assert_eq!(w.finish().revision, 5);

    // Readers still see the revision before the batch.
    assert_eq!(f.store.revision(), 2);
    assert_eq!(f.keys("a", b"\0", RangeOptions::default()).0, vec!["a"]);
    drop(w);
    txn.commit().unwrap();
    f.store.publish(5);
    assert_eq!(f.get_at("a", 0).unwrap().unwrap().value, b"2");
    assert_eq!(f.get_at("b", 3).unwrap().unwrap().value, b"1");
    assert_eq!(f.get_at("b", 4).unwrap(), None);
    assert_eq!(f.store.written_revision(), 5);
}
