//! Defragmentation: replaces the member's state database file with a compacted copy while the
//! member keeps serving. (The log database stays small: its front is truncated as the state
//! advances, and redb reuses the pages.)
//!
//! Contract:
//! - [`copy`] runs on any thread and pauses nothing: it copies every table of one read
//!   transaction into a fresh file beside the database (`conclave.redb.defrag`), compacts it, and
//!   catches it up once from a later read transaction (the same way as below, without holding
//!   anyone), so that little is left for the pause.
//! - [`catch_up`] runs where nothing else writes (the raft task, between two of its writes): it
//!   brings the copy up to date with what was written meanwhile — MVCC rows after the last copied
//!   one, and the small tables whole — commits it durably ([`catch_up`]); then [`install`] renames it over the database file and makes it
//!   current ([`Db::replace`]). Writers wait for these two only; readers never wait.
//! - MVCC rows only ever get appended, except by a compaction. A compaction applied while copying
//!   makes the copy stale (the caller copies again); a snapshot installed meanwhile
//!   does not: the same compacted revision means the same surviving history.
//! - A crash leaves either the old file or the whole new one in place; a copy left behind is
//!   removed when the database is opened ([`remove_leftover`]).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableTable, TableDefinition, Value,
    WriteTransaction,
};

use super::{
    ALARMS, DB_FILE, Db, LEASES, MEMBERS, META, META_COMPACTED_REV, MVCC, RAFT_APPLIED,
    REMOVED_MEMBERS, StorageResult, create_file,
};

/// Name of the copy being made, inside the data dir.
const COPY_FILE: &str = "conclave.redb.defrag";
/// Bytes copied per write transaction while copying in the background.
const BATCH_BYTES: usize = 64 * 1024 * 1024;

/// A copy of the database as of one read transaction, not yet current.
pub struct Copy {
    db: Database,
    path: PathBuf,
    /// The compacted revision the copy was made at.
    compacted: u64,
    /// The last MVCC row copied.
    last_row: Option<(u64, u64)>,
    /// How long copying took.
    pub elapsed: Duration,
}

/// Removes a copy left by a defragmentation that did not finish.
pub fn remove_leftover(data_dir: &Path) -> StorageResult<()> {
    match std::fs::remove_file(data_dir.join(COPY_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Copies everything `from` (a read transaction of `db`) holds into a fresh, compacted file in
/// `data_dir`, then catches the copy up once with what `db` received meanwhile (from a later read
/// transaction), so that [`catch_up`], which holds the writers, has little left to do.
pub fn copy(db_handle: &Db, from: ReadTransaction, data_dir: &Path) -> StorageResult<Copy> {
    let started = Instant::now();
    remove_leftover(data_dir)?;
    let path = data_dir.join(COPY_FILE);
    let result = (|| {
        let mut db = create_file(&path)?;
        copy_batched(&from, &db, MVCC)?;
        let txn = db.begin_write()?;
        copy_small_tables(&from, &txn)?;
        txn.commit()?;
        // A fresh file holds little slack; compacting returns what the batches left.
        db.compact()?;
        let mut copy = Copy {
            compacted: compacted_revision(&from)?,
            last_row: from.open_table(MVCC)?.last()?.map(|(k, _)| k.value()),
            db,
            path: path.clone(),
            elapsed: Duration::ZERO,
        };
        drop(from);
        // Stale or not, the final catch-up decides; this only shortens it.
        apply_changes(&db_handle.begin_read()?, &mut copy, Durability::None)?;
        copy.elapsed = started.elapsed();
        Ok(copy)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    result
}

/// Brings `copy` up to date with `db` and makes it durable; `None` (and the copy is deleted) if a
/// compaction ran since it was made. Call only where nothing else writes to `db`; an error
/// leaves the database as it was.
pub fn catch_up(db: &Db, mut copy: Copy) -> StorageResult<Option<CaughtUp>> {
    let result = db
        .begin_read()
        .map_err(Into::into)
        .and_then(|current| apply_changes(&current, &mut copy, Durability::Immediate));
    match result {
        Ok(true) => Ok(Some(CaughtUp {
            db: copy.db,
            path: copy.path,
        })),
        other => {
            let _ = std::fs::remove_file(&copy.path);
            other.map(|_| None)
        }
    }
}

/// A copy that holds everything the database holds, durably.
pub struct CaughtUp {
    db: Database,
    path: PathBuf,
}

/// Renames the copy over the database file and makes it current. Call right after
/// [`catch_up`], with nothing written in between. An error here must stop the member: the new
/// file may be in place while the old database is still current.
pub fn install(db: &Db, data_dir: &Path, copy: CaughtUp) -> StorageResult<()> {
    std::fs::rename(&copy.path, data_dir.join(DB_FILE))?;
    db.replace(copy.db);
    super::sync_dir(data_dir)?;
    Ok(())
}

/// Applies to the copy what `current` holds beyond it, committed with `durability`; false (and
/// nothing written) if `current` rewrote history the copy has (a compaction).
fn apply_changes(
    current: &ReadTransaction,
    copy: &mut Copy,
    durability: Durability,
) -> StorageResult<bool> {
    if compacted_revision(current)? != copy.compacted {
        return Ok(false);
    }
    let mut txn = copy.db.begin_write()?;
    txn.set_durability(durability)?;
    let newest;
    {
        let from = current.open_table(MVCC)?;
        let mut to = txn.open_table(MVCC)?;
        if let Some(last) = copy.last_row {
            // The last copied row is still there, unchanged, or history was rewritten.
            let same = match (from.get(last)?, to.get(last)?) {
                (Some(a), Some(b)) => a.value() == b.value(),
                _ => false,
            };
            if !same {
                return Ok(false);
            }
        }
        let newer = match copy.last_row {
            Some(last) => from.range((Bound::Excluded(last), Bound::Unbounded))?,
            None => from.range::<(u64, u64)>(..)?,
        };
        for row in newer {
            let (k, v) = row?;
            to.insert(k.value(), v.value())?;
        }
        newest = from.last()?.map(|(k, _)| k.value());
    }
    copy_small_tables(current, &txn)?;
    txn.commit()?;
    copy.last_row = newest.or(copy.last_row);
    Ok(true)
}

/// Copies the tables that stay small (members, leases, alarms, raft configuration, counters)
/// whole.
fn copy_small_tables(from: &ReadTransaction, to: &WriteTransaction) -> StorageResult<()> {
    copy_table(from, to, RAFT_APPLIED)?;
    copy_table(from, to, MEMBERS)?;
    copy_table(from, to, REMOVED_MEMBERS)?;
    copy_table(from, to, ALARMS)?;
    copy_table(from, to, LEASES)?;
    copy_table(from, to, META)
}

fn copy_table<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> StorageResult<()> {
    to.delete_table(table)?;
    let mut dst = to.open_table(table)?;
    for row in from.open_table(table)?.iter()? {
        let (k, v) = row?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// Copies a table that may be large in transactions of about [`BATCH_BYTES`].
fn copy_batched<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &Database,
    table: TableDefinition<K, V>,
) -> StorageResult<()> {
    let source = from.open_table(table)?;
    let mut rows = source.iter()?.peekable();
    loop {
        let txn = to.begin_write()?;
        let mut bytes = 0;
        {
            let mut dst = txn.open_table(table)?;
            while bytes < BATCH_BYTES {
                let Some(row) = rows.next() else { break };
                let (k, v) = row?;
                bytes +=
                    K::as_bytes(&k.value()).as_ref().len() + V::as_bytes(&v.value()).as_ref().len();
                dst.insert(k.value(), v.value())?;
            }
        }
        txn.commit()?;
        if rows.peek().is_none() {
            return Ok(());
        }
    }
}

fn compacted_revision(txn: &ReadTransaction) -> StorageResult<u64> {
    Ok(txn
        .open_table(META)?
        .get(META_COMPACTED_REV)?
        .map_or(0, |v| v.value()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{self, LEASES};

    /// Every row of every table, in order, as text.
    fn dump(db: &Db) -> Vec<String> {
        let txn = db.begin_read().unwrap();
        let mut out = Vec::new();
        fn rows<K: Key + 'static, V: Value + 'static>(
            txn: &ReadTransaction,
            t: TableDefinition<K, V>,
            out: &mut Vec<String>,
        ) {
            for row in txn.open_table(t).unwrap().iter().unwrap() {
                let (k, v) = row.unwrap();
                out.push(format!("{t}: {:?} = {:?}", k.value(), v.value()));
            }
        }
        rows(&txn, RAFT_APPLIED, &mut out);
        rows(&txn, MVCC, &mut out);
        rows(&txn, MEMBERS, &mut out);
        rows(&txn, REMOVED_MEMBERS, &mut out);
        rows(&txn, ALARMS, &mut out);
        rows(&txn, LEASES, &mut out);
        rows(&txn, META, &mut out);
        out
    }

    fn write(db: &Db, f: impl FnOnce(&WriteTransaction)) {
        let txn = db.begin_write().unwrap();
        f(&txn);
        txn.commit().unwrap();
    }

    fn put_rows(db: &Db, revs: std::ops::Range<u64>, value: &[u8]) {
        write(db, |txn| {
            let mut t = txn.open_table(MVCC).unwrap();
            for rev in revs {
                t.insert((rev, 0), value).unwrap();
            }
        });
    }

    #[test]
    fn the_copy_catches_up_with_writes_made_while_copying_and_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = storage::open(dir.path()).unwrap();
        put_rows(&db, 1..2001, &[7u8; 1024]);
        // Free most of the file: what defragmentation gives back.
        write(&db, |txn| {
            txn.open_table(MVCC)
                .unwrap()
                .retain(|(rev, _), _| rev > 1900)
                .unwrap();
        });
        let before = storage::file_size(dir.path());

        let copy = copy(&db, db.begin_read().unwrap(), dir.path()).unwrap();
        // Meanwhile: new rows, a conf state, a lease, a counter.
        put_rows(&db, 2001..2101, b"new");
        write(&db, |txn| {
            txn.open_table(RAFT_APPLIED)
                .unwrap()
                .insert("conf_state", b"cs".as_slice())
                .unwrap();
            txn.open_table(LEASES).unwrap().insert(5, (10, 3)).unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("applied_index", 120)
                .unwrap();
        });
        let expected = dump(&db);

        let caught_up = catch_up(&db, copy).unwrap().expect("not stale");
        install(&db, dir.path(), caught_up).unwrap();
        assert_eq!(dump(&db), expected);
        let after = storage::file_size(dir.path());
        assert!(after < before / 2, "{before} -> {after} bytes");
        // The data dir holds the new file: reopening finds everything.
        drop(db);
        assert_eq!(dump(&storage::open(dir.path()).unwrap()), expected);
        assert!(!dir.path().join(COPY_FILE).exists());
    }

    #[test]
    fn a_compaction_while_copying_makes_the_copy_stale() {
        let dir = tempfile::tempdir().unwrap();
        let db = storage::open(dir.path()).unwrap();
        put_rows(&db, 1..11, b"v");
        let copy = copy(&db, db.begin_read().unwrap(), dir.path()).unwrap();
        write(&db, |txn| {
            txn.open_table(MVCC).unwrap().remove((3, 0)).unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_COMPACTED_REV, 4)
                .unwrap();
        });
        let expected = dump(&db);
        assert!(catch_up(&db, copy).unwrap().is_none());
        assert_eq!(dump(&db), expected);
        assert!(!dir.path().join(COPY_FILE).exists());
    }

    #[test]
    fn a_copy_left_by_a_crash_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = storage::open(dir.path()).unwrap();
        put_rows(&db, 1..11, b"v");
        let expected = dump(&db);
        let copy = copy(&db, db.begin_read().unwrap(), dir.path()).unwrap();
        assert!(dir.path().join(COPY_FILE).exists());
        std::mem::forget(copy.db);
        drop(db);
        let db = storage::open(dir.path()).unwrap();
        assert!(!dir.path().join(COPY_FILE).exists());
        assert_eq!(dump(&db), expected);
    }
}
