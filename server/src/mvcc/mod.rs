//! Revisioned key-value store with etcd's semantics: one global revision per modifying request, per
//! key create/mod revision, version and lease, tombstones, reads at past revisions, and compaction.
//!
//! Values live in redb (`storage::MVCC`, keyed by revision); an in-memory index maps each key to its
//! history and is rebuilt from the table at start. Knows nothing about raft or tokio: the applier
//! writes through a [`Writer`] inside its transaction and calls [`Store::publish`] after the commit;
//! readers only see revisions up to the published one.

mod key_index;
mod key_map;

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use conclave_proto::mvccpb::{Event, KeyValue, event::EventType};
use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, Table, WriteTransaction};

use crate::storage::{Db, META, META_COMPACTED_REV, MVCC, StorageError};
pub use key_index::{KeyHistory, Revision};
use key_map::KeyMap;

/// Errors of MVCC reads and compactions.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("required revision has been compacted")]
    Compacted,
    #[error("required revision is a future revision")]
    FutureRevision,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for MvccError {
            fn from(e: $t) -> Self {
                MvccError::Storage(StorageError::Database(e.into()))
            }
        }
    )*};
}

from_redb!(redb::TransactionError, redb::TableError, redb::StorageError);

pub type MvccResult<T> = Result<T, MvccError>;

const KIND_PUT: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;

/// The first revision of an empty store (etcd starts at 1; the first write is revision 2).
const INITIAL_REVISION: i64 = 1;

/// Start and end bound of a key interval.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// A key interval as etcd encodes it: empty `end` = the key alone; `end == [0]` = every key >= `key`.
#[derive(Debug, Clone, Copy)]
pub struct KeyRange<'a> {
    pub key: &'a [u8],
    pub end: &'a [u8],
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], end: &'a [u8]) -> Self {
        KeyRange { key, end }
    }

    fn bounds(&self) -> Option<KeyBounds<'a>> {
        if self.end.is_empty() {
            return Some((Bound::Included(self.key), Bound::Included(self.key)));
        }
        if self.end == [0] {
            return Some((Bound::Included(self.key), Bound::Unbounded));
        }
        if self.key >= self.end {
            return None;
        }
        Some((Bound::Included(self.key), Bound::Excluded(self.end)))
    }

    /// Whether `k` lies in the interval.
    pub fn contains(&self, k: &[u8]) -> bool {
        match self.bounds() {
            None => false,
            Some((_, Bound::Included(end))) => k == end,
            Some((_, Bound::Unbounded)) => k >= self.key,
            Some((_, Bound::Excluded(end))) => k >= self.key && k < end,
        }
    }
}

/// Options of a range read at the MVCC level.
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// At most this many key-values (0 = no limit); `count` still counts them all.
    pub limit: usize,
    /// Read at this revision (0 = the newest).
    pub revision: i64,
    /// Only count, return no key-values.
    pub count_only: bool,
}

/// Result of a range read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range at the read revision.
    pub count: usize,
    /// The store's newest revision when the read happened (for the response header).
    pub revision: i64,
}

struct Index {
    keys: KeyMap,
    /// Newest revision written (may be ahead of `Store::published` while a batch is applied).
    current: i64,
    compacted: i64,
    /// Bytes of the history stored (row keys and values): what the space quota measures.
    stored_bytes: u64,
}

/// What one MVCC row counts for in the space quota.
fn row_bytes(value_len: usize) -> u64 {
    16 + value_len as u64
}

/// The MVCC store of one member.
pub struct Store {
    db: Db,
    index: RwLock<Index>,
    published: AtomicI64,
    /// `Index::stored_bytes` as of the last finished request, readable without the index lock
    /// (the quota check runs on every write request).
    stored: AtomicU64,
}

fn corrupt(detail: impl ToString) -> MvccError {
    MvccError::Storage(StorageError::Corrupt {
        table: "mvcc",
        detail: detail.to_string(),
    })
}

fn encode_row(kind: u8, kv: &KeyValue) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.encoded_len());
    buf.push(kind);
    // Encoding into a Vec cannot run out of space.
    let _ = kv.encode(&mut buf);
    buf
}

fn decode_row(bytes: &[u8]) -> MvccResult<(u8, KeyValue)> {
    let (&kind, rest) = bytes.split_first().ok_or_else(|| corrupt("empty row"))?;
    let kv = KeyValue::decode(rest).map_err(corrupt)?;
    Ok((kind, kv))
}

fn row_key(rev: Revision) -> (u64, u64) {
    (rev.main as u64, rev.sub as u64)
}

fn read_value(
    table: &impl ReadableTable<(u64, u64), &'static [u8]>,
    rev: Revision,
) -> MvccResult<KeyValue> {
    let row = table
        .get(row_key(rev))?
        .ok_or_else(|| corrupt(format!("no row at revision {rev:?}")))?;
    let (kind, kv) = decode_row(row.value())?;
    if kind != KIND_PUT {
        return Err(corrupt(format!("revision {rev:?} is not a put")));
    }
    Ok(kv)
}

/// Collects the revisions visible at `at` in `range`, honouring limit and count_only.
fn visible_revisions(
    index: &Index,
    range: KeyRange<'_>,
    at: i64,
    opts: &RangeOptions,
) -> (Vec<Revision>, usize) {
    let mut revs = Vec::new();
    let mut count = 0;
    if let Some(bounds) = range.bounds() {
        for (_, history) in index.keys.range(bounds) {
            if let Some(v) = history.get(at) {
                count += 1;
                if !opts.count_only && (opts.limit == 0 || revs.len() < opts.limit) {
                    revs.push(v.modified);
                }
            }
        }
    }
    (revs, count)
}

fn check_revision(index: &Index, newest: i64, requested: i64) -> MvccResult<i64> {
    if requested <= 0 {
        return Ok(newest);
    }
    if requested > newest {
        return Err(MvccError::FutureRevision);
    }
    if requested < index.compacted {
        return Err(MvccError::Compacted);
    }
    Ok(requested)
}

/// Reads the MVCC table into a fresh index.
fn load_index(db: &Database) -> MvccResult<Index> {
    let txn = db.begin_read()?;
    let compacted = txn
        .open_table(META)?
        .get(META_COMPACTED_REV)?
        .map(|v| v.value() as i64)
        .unwrap_or(0);
    let mut keys = KeyMap::default();
    let mut current = INITIAL_REVISION.max(compacted);
    let mut stored_bytes = 0;
    let table = txn.open_table(MVCC)?;
    for row in table.iter()? {
        let (k, v) = row?;
        stored_bytes += row_bytes(v.value().len());
        let (main, sub) = k.value();
        let rev = Revision::new(main as i64, sub as i64);
        let (kind, kv) = decode_row(v.value())?;
        let history = keys.entry(&kv.key);
        if kind == KIND_TOMBSTONE {
            history.tombstone(rev);
            history.lease = 0;
        } else {
            history.put(rev);
            history.lease = kv.lease;
        }
        current = current.max(rev.main);
    }
    drop(table);
    drop(txn);
    Ok(Index {
        keys,
        current,
        compacted,
        stored_bytes,
    })
}

impl Store {
    /// Loads the store from the database, rebuilding the in-memory index from the MVCC table.
    pub fn open(db: Db) -> MvccResult<Store> {
        let index = load_index(&db.get())?;
        let current = index.current;
        let stored = AtomicU64::new(index.stored_bytes);
        Ok(Store {
            db,
            index: RwLock::new(index),
            published: AtomicI64::new(current),
            stored,
        })
    }

    /// Bytes of history stored (what the space quota measures); identical on every member at
    /// the same revision.
    pub fn stored_bytes(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// The database the store lives in.
    pub fn db(&self) -> Arc<Database> {
        self.db.get()
    }

    /// Rebuilds the index after the database's MVCC table was replaced (a snapshot was installed)
    /// and publishes its newest revision.
    pub fn reload(&self) -> MvccResult<()> {
        let index = load_index(&self.db.get())?;
        let current = index.current;
        self.stored.store(index.stored_bytes, Ordering::Relaxed);
        *write_lock(&self.index) = index;
        self.published.store(current, Ordering::Release);
        Ok(())
    }

    fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        read_lock(&self.index)
    }

    /// The newest revision readers may see.
    pub fn revision(&self) -> i64 {
        self.published.load(Ordering::Acquire)
    }

    /// The newest revision written by apply, committed or not (apply publishes it after committing).
    pub fn written_revision(&self) -> i64 {
        self.read_index().current
    }

    /// The compaction point: revisions below it can no longer be read.
    pub fn compacted_revision(&self) -> i64 {
        self.read_index().compacted
    }

    /// Number of live keys (for status and metrics).
    pub fn key_count(&self) -> usize {
        self.read_index()
            .keys
            .iter()
            .filter(|(_, h)| h.is_live())
            .count()
    }

    /// Every live key attached to a lease, as (lease, key): the lessor rebuilds its attachments
    /// from this at start.
    pub fn leased_keys(&self) -> Vec<(i64, Vec<u8>)> {
        self.read_index()
            .keys
            .iter()
            .filter(|(_, h)| h.lease != 0 && h.is_live())
            .map(|(k, h)| (h.lease, k.to_vec()))
            .collect()
    }

    /// Makes everything written up to `revision` visible to readers. Called after the commit.
    pub fn publish(&self, revision: i64) {
        self.published.fetch_max(revision, Ordering::AcqRel);
    }

    /// Reads `range` at `opts.revision` (0 = newest published).
    pub fn range(&self, range: KeyRange<'_>, opts: RangeOptions) -> MvccResult<RangeResult> {
        // Open the snapshot before looking at the index: a compaction that the index already shows
        // has then either not deleted rows in our snapshot, or is visible as `compacted` below.
        let newest = self.revision();
        let txn = self.db.begin_read()?;
        let (revs, count) = {
            let index = self.read_index();
            let at = check_revision(&index, newest, opts.revision)?;
            visible_revisions(&index, range, at, &opts)
        };
        let table = txn.open_table(MVCC)?;
        let kvs = revs
            .into_iter()
            .map(|rev| read_value(&table, rev))
            .collect::<MvccResult<Vec<_>>>()?;
        Ok(RangeResult {
            kvs,
            count,
            revision: newest,
        })
    }

    /// The changes in `range` from revision `from` on, as watch events in revision order, each
    /// with the key's previous value when `with_prev` is set. Stops at a revision boundary once
    /// `max_bytes` of events are collected, or at the newest published revision. Returns the events
    /// and the last revision scanned: every matching event up to it is included.
    pub fn history(
        &self,
        range: KeyRange<'_>,
        from: i64,
        with_prev: bool,
        max_bytes: usize,
    ) -> MvccResult<(Vec<Event>, i64)> {
        let newest = self.revision();
        let txn = self.db.begin_read()?;
        if from <= self.read_index().compacted {
            return Err(MvccError::Compacted);
        }
        let table = txn.open_table(MVCC)?;
        let mut events: Vec<Event> = Vec::new();
        let mut bytes = 0;
        // Every revision up to `complete` has been scanned entirely.
        let mut complete = from - 1;
        let mut current = None;
        let lower = (from.max(0) as u64, 0);
        let upper = (newest.max(0) as u64, u64::MAX);
        for row in table.range(lower..=upper)? {
            let (k, v) = row?;
            let main = k.value().0 as i64;
            if current != Some(main) {
                if let Some(done) = current {
                    complete = done;
                }
                if bytes >= max_bytes {
                    return Ok((events, complete));
                }
                current = Some(main);
            }
            let (kind, kv) = decode_row(v.value())?;
            if !range.contains(&kv.key) {
                continue;
            }
            let prev_kv = if with_prev {
                self.value_before(&table, &kv.key, main)?
            } else {
                None
            };
            let kind = if kind == KIND_TOMBSTONE {
                EventType::Delete
            } else {
                EventType::Put
            };
            let event = Event {
                r#type: kind as i32,
                kv: Some(kv),
                prev_kv,
            };
            bytes += event.encoded_len();
            events.push(event);
        }
        Ok((events, newest.max(complete)))
    }

    /// The value `key` had just before revision `main`, if it was live then.
    fn value_before(
        &self,
        table: &impl ReadableTable<(u64, u64), &'static [u8]>,
        key: &[u8],
        main: i64,
    ) -> MvccResult<Option<KeyValue>> {
        let visible = {
            let index = self.read_index();
            if main - 1 < index.compacted {
                return Err(MvccError::Compacted);
            }
            index.keys.get(key).and_then(|h| h.get(main - 1))
        };
        match visible {
            Some(v) => Ok(Some(read_value(table, v.modified)?)),
            None => Ok(None),
        }
    }

    /// Opens the store for writing inside the apply transaction `txn`, for any number of requests
    /// one after the other (each ended by [`Writer::finish`]). The table is opened once per
    /// transaction: opening it per request was ~3% of a member's CPU under put load. The index
    /// lock is taken per operation, so readers never wait for more than one.
    pub fn writer<'s, 't>(&'s self, txn: &'t WriteTransaction) -> MvccResult<Writer<'s, 't>> {
        let table = txn.open_table(MVCC)?;
        let current = self.read_index().current;
        Ok(Writer {
            index: &self.index,
            stored: &self.stored,
            table,
            txn,
            current,
            main: current + 1,
            sub: 0,
            events: Vec::new(),
            lease_moves: Vec::new(),
        })
    }

    /// The value `key` had just before revision `main` (None if it was not live then), from a
    /// read transaction of its own. Fails with `Compacted` if that history is gone.
    pub fn value_before_revision(&self, key: &[u8], main: i64) -> MvccResult<Option<KeyValue>> {
        let txn = self.db.begin_read().map_err(StorageError::from)?;
        let table = txn.open_table(MVCC).map_err(StorageError::from)?;
        self.value_before(&table, key, main)
    }
}

// The index is only changed under the write lock by code that cannot leave it half-updated by a
// panic (a panic in apply stops the member), so a poisoned lock's data is usable.
fn read_lock(index: &RwLock<Index>) -> RwLockReadGuard<'_, Index> {
    index.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock(index: &RwLock<Index>) -> RwLockWriteGuard<'_, Index> {
    index.write().unwrap_or_else(|p| p.into_inner())
}

/// A key attached to another lease (0: none) by a put or a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseMove {
    pub key: Vec<u8>,
    pub from: i64,
    pub to: i64,
}

/// Writes requests, one after the other, inside one apply transaction: every write of a request gets
/// revision `main` with increasing `sub`. Reads through the writer see the request's own writes
/// (and those of the requests before it). Apply is the index's only writer, so the index changes
/// only through this writer while it lives.
pub struct Writer<'s, 't> {
    index: &'s RwLock<Index>,
    stored: &'s AtomicU64,
    table: Table<'t, (u64, u64), &'static [u8]>,
    txn: &'t WriteTransaction,
    /// The store's revision before the current request.
    current: i64,
    main: i64,
    sub: i64,
    events: Vec<Event>,
    lease_moves: Vec<LeaseMove>,
}

/// What one request changed: the store revision after it, its events, and the keys whose lease
/// attachment changed. A delete event carries the deleted value as `prev_kv`; a put event carries
/// none (reading it would cost every put a database read: see [`Store::value_before_revision`]).
#[derive(Debug, Default)]
pub struct Changes {
    pub revision: i64,
    pub events: Vec<Event>,
    pub lease_moves: Vec<LeaseMove>,
}

impl Writer<'_, '_> {
    /// The revision reads inside this request observe.
    fn read_revision(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.current
        }
    }

    fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        read_lock(self.index)
    }

    /// The store's revision including this request's writes so far.
    pub fn revision(&self) -> i64 {
        self.read_revision()
    }

    /// The store's compaction point.
    pub fn compacted_revision(&self) -> i64 {
        self.read_index().compacted
    }

    /// Reads a range as the request sees it (its own writes included).
    pub fn range(&self, range: KeyRange<'_>, opts: RangeOptions) -> MvccResult<RangeResult> {
        let newest = self.read_revision();
        let (revs, count) = {
            let index = self.read_index();
            let at = check_revision(&index, newest, opts.revision)?;
            visible_revisions(&index, range, at, &opts)
        };
        let kvs = revs
            .into_iter()
            .map(|rev| read_value(&self.table, rev))
            .collect::<MvccResult<Vec<_>>>()?;
        Ok(RangeResult {
            kvs,
            count,
            revision: newest,
        })
    }

    /// The current value of `key`, if live.
    pub fn get(&self, key: &[u8]) -> MvccResult<Option<KeyValue>> {
        let at = self.read_revision();
        let modified = self
            .read_index()
            .keys
            .get(key)
            .and_then(|h| h.get(at))
            .map(|v| v.modified);
        match modified {
            Some(rev) => Ok(Some(read_value(&self.table, rev)?)),
            None => Ok(None),
        }
    }

    /// Writes `key = value` with `lease`. Reads nothing: the previous value is not looked up.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> MvccResult<()> {
        let rev = Revision::new(self.main, self.sub);
        let mut index = write_lock(self.index);
        let history = index.keys.entry(key);
        let (create_revision, version) = history.put(rev);
        if history.lease != lease {
            self.lease_moves.push(LeaseMove {
                key: key.to_vec(),
                from: history.lease,
                to: lease,
            });
        }
        history.lease = lease;
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        let row = encode_row(KIND_PUT, &kv);
        index.stored_bytes += row_bytes(row.len());
        drop(index);
        self.table.insert(row_key(rev), row.as_slice())?;
        self.sub += 1;
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(())
    }

    /// Deletes every live key in `range`; returns their last values, in key order.
    pub fn delete_range(&mut self, range: KeyRange<'_>) -> MvccResult<Vec<KeyValue>> {
        let existing = self.range(range, RangeOptions::default())?.kvs;
        for kv in &existing {
            let rev = Revision::new(self.main, self.sub);
            let mut index = write_lock(self.index);
            if let Some(history) = index.keys.get_mut(&kv.key) {
                history.tombstone(rev);
                history.lease = 0;
            }
            if kv.lease != 0 {
                self.lease_moves.push(LeaseMove {
                    key: kv.key.clone(),
                    from: kv.lease,
                    to: 0,
                });
            }
            let tomb = KeyValue {
                key: kv.key.clone(),
                mod_revision: rev.main,
                ..Default::default()
            };
            let row = encode_row(KIND_TOMBSTONE, &tomb);
            index.stored_bytes += row_bytes(row.len());
            drop(index);
            self.table.insert(row_key(rev), row.as_slice())?;
            self.sub += 1;
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(tomb),
                prev_kv: Some(kv.clone()),
            });
        }
        Ok(existing)
    }

    /// Removes all history below `at` that no read at `at` or later needs. Does not create a revision.
    pub fn compact(&mut self, at: i64) -> MvccResult<()> {
        let newest = self.read_revision();
        let mut index = write_lock(self.index);
        if at <= index.compacted {
            return Err(MvccError::Compacted);
        }
        if at > newest {
            return Err(MvccError::FutureRevision);
        }
        let mut keep: HashSet<Revision> = HashSet::new();
        index.keys.retain(|history| !history.compact(at, &mut keep));
        let upper = (at as u64, u64::MAX);
        let mut freed = 0;
        self.table.retain_in(..=upper, |(main, sub), value| {
            let kept = keep.contains(&Revision::new(main as i64, sub as i64));
            if !kept {
                freed += row_bytes(value.len());
            }
            kept
        })?;
        index.stored_bytes = index.stored_bytes.saturating_sub(freed);
        index.compacted = at;
        drop(index);
        self.txn
            .open_table(META)?
            .insert(META_COMPACTED_REV, at as u64)?;
        Ok(())
    }

    /// Ends the request; returns the store revision after it (unchanged if it wrote nothing) and
    /// the events it produced. The writer is ready for the next request.
    pub fn finish(&mut self) -> Changes {
        if self.sub > 0 {
            self.current = self.main;
        }
        let mut index = write_lock(self.index);
        index.current = self.current;
        self.stored.store(index.stored_bytes, Ordering::Relaxed);
        drop(index);
        self.main = self.current + 1;
        self.sub = 0;
        Changes {
            revision: self.current,
            events: std::mem::take(&mut self.events),
            lease_moves: std::mem::take(&mut self.lease_moves),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
