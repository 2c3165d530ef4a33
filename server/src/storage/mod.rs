//! The member's storage: the redb state database and the raft log's write-ahead log.
//!
//! - The state database (`conclave.redb`): the MVCC key-value history (`mvcc`), the member table,
//!   the leases, the alarms, raft's configuration as of the applied index (`raft_applied`), and
//!   bookkeeping (`meta`: schema version, applied index). Apply commits to it without syncing; it
//!   is made durable before the log is truncated (and periodically), so a crash loses only applied
//!   state the log still holds.
//! - The write-ahead log (`wal/`, [`wal`]): the raft log, the hard state and the truncation point,
//!   synced on every append (see docs/architecture.md, *Durability*, for why it is not in redb).
//!
//! Opening checks the schema version, refuses a newer one, and upgrades an older one (schema 1
//! kept the log in the state database: [`open_log`] moves it).

pub mod backup;
pub mod defrag;
mod error;
pub mod raft_log;
pub mod snapshot;
pub mod wal;

use std::path::Path;
use std::sync::{Arc, RwLock};

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TransactionError,
    WriteTransaction,
};

pub use error::{StorageError, StorageResult};

/// Schema 1 only (moved to the WAL): raft log entries by index (raft-rs `Entry`, protobuf).
pub const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Schema 1 only (moved to the WAL and `raft_applied`): raft's hard state, conf state and the
/// position of the log's truncation point.
pub const RAFT_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");
/// State database: raft's conf state as of the applied index, and the index and term of the last
/// snapshot installed (or of the bootstrap), written in the same transactions as the state.
pub const RAFT_APPLIED: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_applied");
/// MVCC rows by (main revision, sub revision): a kind byte then an encoded `mvccpb.KeyValue`.
pub const MVCC: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("mvcc");
/// Member table: member id -> encoded `MemberRecord`.
pub const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");
/// Ids of members removed from the cluster (their messages are refused, so they learn it).
pub const REMOVED_MEMBERS: TableDefinition<u64, ()> = TableDefinition::new("removed_members");
/// Raised alarms: (member id, etcd AlarmType).
pub const ALARMS: TableDefinition<(u64, i32), ()> = TableDefinition::new("alarms");
/// Leases: id -> (granted TTL, checkpointed remaining TTL; 0 = none), both in seconds.
pub const LEASES: TableDefinition<i64, (i64, i64)> = TableDefinition::new("leases");
/// Small counters: schema version, applied index, compacted revision, identity.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub const META_SCHEMA: &str = "schema_version";
pub const META_APPLIED_INDEX: &str = "applied_index";
pub const META_COMPACTED_REV: &str = "compacted_revision";
pub const META_MEMBER_ID: &str = "member_id";
pub const META_CLUSTER_ID: &str = "cluster_id";

/// The schema this binary writes. Bump it when a table's encoding changes, and teach `open` to upgrade.
/// 2: the raft log moved to its own write-ahead log.
pub const SCHEMA_VERSION: u64 = 2;
/// Schema 1 kept the raft log and hard state in the state database.
const SCHEMA_ONE_DATABASE: u64 = 1;

/// File name of the state database inside the data dir.
pub const DB_FILE: &str = "conclave.redb";

/// Page cache of one database.
const CACHE_BYTES: usize = 256 * 1024 * 1024;

/// The member's database, shared by everything that reads or writes it. Defragmentation replaces
/// the whole database with a compacted copy ([`Db::replace`]); every transaction starts on the
/// current one, and a transaction begun before a replacement finishes on the old one (whose
/// contents the copy has, so it is never newer than what the caller already saw).
#[derive(Clone)]
pub struct Db(Arc<RwLock<Arc<Database>>>);

impl Db {
    /// Wraps an open database.
    pub fn new(db: Database) -> Self {
        Db(Arc::new(RwLock::new(Arc::new(db))))
    }

    /// The current database.
    pub fn get(&self) -> Arc<Database> {
        // Replacing is a single assignment: a poisoned lock still holds a whole value.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn begin_read(&self) -> Result<ReadTransaction, TransactionError> {
        self.get().begin_read()
    }

    pub fn begin_write(&self) -> Result<WriteTransaction, TransactionError> {
        self.get().begin_write()
    }

    /// Makes `db` the current database. Only the raft task writes, and it calls this between
    /// two of its own transactions. The old database is closed (redb writes and syncs its
    /// allocator state then) on a thread of its own once nobody uses it any more, so neither
    /// the caller nor a reader finishing a transaction on it waits for that.
    pub fn replace(&self, db: Database) {
        let old = std::mem::replace(
            &mut *self.0.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(db),
        );
        let closing = std::thread::Builder::new()
            .name("conclave-db-close".into())
            .spawn(move || {
                while Arc::strong_count(&old) > 1 {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                drop(old);
            });
        if let Err(e) = closing {
            // Without the thread, whoever holds the last reference closes it.
            tracing::warn!(error = %e, "cannot start a thread to close the old database");
        }
    }
}

/// Makes a directory's entries (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates (or opens) a database file with this member's settings.
fn create_file(path: &Path) -> StorageResult<Database> {
    Ok(Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)?)
}

/// Directory of the write-ahead log inside the data dir.
pub const WAL_DIR: &str = "wal";

/// Opens (creating if needed) the write-ahead log of the raft log in `data_dir`, beside the state
/// database `state` (opened first with [`open`]). A state database of schema 1 holds the log
/// itself: it is moved to the WAL first (see [`raft_log::move_log`]).
pub fn open_log(data_dir: &Path, state: &Db) -> StorageResult<wal::Wal> {
    let mut log = wal::Wal::open(&data_dir.join(WAL_DIR))?;
    if read_meta(&state.get(), META_SCHEMA)? == SCHEMA_ONE_DATABASE {
        raft_log::move_log(&state.get(), &mut log)?;
        tracing::info!("moved the raft log to its own write-ahead log: schema {SCHEMA_VERSION}");
    }
    Ok(log)
}

/// Opens (creating if needed) the state database in `data_dir`, creating every table so readers
/// never meet a missing one, and checking the schema version (an older one is upgraded by
/// [`open_log`]). A defragmentation copy left by a crash is removed: the database it was made
/// from is still in place.
pub fn open(data_dir: &Path) -> StorageResult<Db> {
    std::fs::create_dir_all(data_dir)?;
    defrag::remove_leftover(data_dir)?;
    let db = create_file(&data_dir.join(DB_FILE))?;
    let txn = db.begin_write()?;
    {
        txn.open_table(RAFT_APPLIED)?;
        txn.open_table(MVCC)?;
        txn.open_table(MEMBERS)?;
        txn.open_table(REMOVED_MEMBERS)?;
        txn.open_table(ALARMS)?;
        txn.open_table(LEASES)?;
        let mut meta = txn.open_table(META)?;
        let found = meta.get(META_SCHEMA)?.map(|v| v.value());
        match found {
            None => {
                meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StorageError::NewerSchema {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(_) => {}
        }
    }
    txn.commit()?;
    Ok(Db::new(db))
}

/// Reads one `meta` counter (0 when absent).
pub fn read_meta(db: &Database, key: &str) -> StorageResult<u64> {
    let txn = db.begin_read()?;
    let table = txn.open_table(META)?;
    Ok(table.get(key)?.map(|v| v.value()).unwrap_or(0))
}

/// crc32 of the MVCC rows up to revision `upto` (HashKV): identical on every member that applied
/// the same history with the same compactions.
pub fn hash_kv(db: &Database, upto: i64) -> StorageResult<u32> {
    let txn = db.begin_read()?;
    let mut hasher = crc32fast::Hasher::new();
    for row in txn
        .open_table(MVCC)?
        .range(..=(upto.max(0) as u64, u64::MAX))?
    {
        let (k, v) = row?;
        let (main, sub) = k.value();
        hasher.update(&main.to_be_bytes());
        hasher.update(&sub.to_be_bytes());
        hasher.update(v.value());
    }
    Ok(hasher.finalize())
}

/// Size of the database file in bytes.
pub fn file_size(data_dir: &Path) -> u64 {
    std::fs::metadata(data_dir.join(DB_FILE))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(dir.path()).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_SCHEMA, SCHEMA_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = open(dir.path()).err().unwrap();
        assert!(matches!(err, StorageError::NewerSchema { .. }), "{err}");
    }

    #[test]
    fn reopens_same_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()).unwrap());
        let db = open(dir.path()).unwrap();
        assert_eq!(read_meta(&db.get(), META_SCHEMA).unwrap(), SCHEMA_VERSION);
    }
}
