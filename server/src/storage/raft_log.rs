//! `raft::Storage` over redb: the raft log, hard state and conf state of one member.
//!
//! Contract (raft-rs): if a method here fails, the raft instance is inoperable and the member stops.
//! Writes (`append`, `truncate_prefix`) are called only by the raft task; reads come from
//! raft-rs on the same task. Entries, term and vote are made durable in the write-ahead log
//! ([`super::wal`]) before `append` returns, so the raft task may send the messages that depend
//! on them afterwards. The conf state lives in the state database, written with the applied
//! state it belongs to.
//!
//! Across the WAL and the state database (see [`crate::storage`]): the log is truncated only up
//! to what the state database holds durably (the caller syncs it first, and
//! [`RaftLog::truncate_prefix`] checks), so at start the log always holds every entry after the
//! applied index. A snapshot is installed in the state database
//! first, then the log restarts after it; a crash between the two leaves a log that ends before
//! the applied index, which [`RaftLog::open`] restarts from the snapshot recorded with the state.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};

use super::wal::Wal;

use super::snapshot::Registry;
use super::{
    Db, META, META_APPLIED_INDEX, META_SCHEMA, RAFT_APPLIED, RAFT_LOG, RAFT_STATE, SCHEMA_VERSION,
    StorageError, StorageResult,
};

/// Schema 1, `raft_state` of the state database: term, vote (and a commit index, not current).
const KEY_HARD_STATE: &str = "hard_state";
/// Schema 1, `raft_state` of the state database: index and term of the last entry removed from
/// the front of the log.
const KEY_TRUNCATED: &str = "truncated";
/// State database, `raft_applied`: the configuration as of the applied index.
const KEY_CONF_STATE: &str = "conf_state";
/// State database, `raft_applied`: index and term of the last snapshot installed (or of the
/// bootstrap), where the log restarts if it ends before the applied index.
const KEY_SNAPSHOT: &str = "snapshot";

/// How many of the newest entries are kept in memory, so that replication and `term` lookups do not
/// read the database.
const TAIL_CACHE_ENTRIES: usize = 4096;

/// The raft log of one member, shared between the raft task (writes) and raft-rs (reads).
#[derive(Clone)]
pub struct RaftLog {
    /// The state database (for the conf state, and to sync it before truncating).
    state: Db,
    inner: Arc<Mutex<Inner>>,
    snapshots: Arc<Registry>,
}

struct Inner {
    hard_state: HardState,
    conf_state: ConfState,
    truncated_index: u64,
    truncated_term: u64,
    last_index: u64,
    /// The newest entries, contiguous, ending at `last_index`.
    tail: VecDeque<Entry>,
    /// The applied index as of the last durable commit of the state database made here.
    state_synced: u64,
    /// Where the entries, hard state and truncation point are stored.
    wal: Wal,
}

impl Inner {
    fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }

    fn cached(&self, index: u64) -> Option<&Entry> {
        let first = self.tail.front()?.index;
        if index < first {
            return None;
        }
        self.tail.get((index - first) as usize)
    }
}

fn corrupt(detail: impl ToString) -> StorageError {
    StorageError::Corrupt {
        table: "raft_log",
        detail: detail.to_string(),
    }
}

fn encode<M: protobuf::Message>(m: &M) -> StorageResult<Vec<u8>> {
    m.write_to_bytes().map_err(corrupt)
}

fn decode<M: protobuf::Message>(bytes: &[u8]) -> StorageResult<M> {
    M::parse_from_bytes(bytes).map_err(corrupt)
}

fn store_err(e: StorageError) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(Box::new(e)))
}

impl RaftLog {
    /// Loads the raft state from the write-ahead log `wal` and the state database `state` (an
    /// empty log when new), restarting the log after the recorded snapshot if it ends before the
    /// applied index (a crash while installing a snapshot).
    pub fn open(mut wal: Wal, state: Db) -> StorageResult<Self> {
        let (applied, conf_state, snapshot) = {
            let txn = state.begin_read()?;
            let applied = txn
                .open_table(META)?
                .get(META_APPLIED_INDEX)?
                .map_or(0, |v| v.value());
            let table = txn.open_table(RAFT_APPLIED)?;
            let conf_state: ConfState = match table.get(KEY_CONF_STATE)? {
                Some(v) => decode(v.value())?,
                None => ConfState::default(),
            };
            let snapshot = match table.get(KEY_SNAPSHOT)? {
                Some(v) => Some(decode_pair(v.value())?),
                None => None,
            };
            (applied, conf_state, snapshot)
        };
        let mut hard_state = wal.hard_state().clone();
        let (mut truncated_index, mut truncated_term) = wal.truncated();
        let last = wal.last_index();
        // A snapshot installed in the state database whose log reset did not happen (a crash in
        // between): the log ends before it, or holds a different entry at its index (raft-rs
        // installs a snapshot over a conflicting log too). Entries after a conflict cannot match
        // the leader's log; entries after a matching one are kept.
        let installed = snapshot.filter(|(index, term)| {
            *index == applied && *index > truncated_index && wal.term(*index) != Some(*term)
        });
        if let Some((index, term)) = installed {
            hard_state.term = hard_state.term.max(term);
            wal.reset(&hard_state, index, term)?;
            (truncated_index, truncated_term) = (index, term);
        } else if applied > last {
            return Err(corrupt(format!(
                "the log ends at {last}, before the applied index {applied}"
            )));
        } else if truncated_index > applied {
            return Err(corrupt(format!(
                "the log starts at {}, after the applied index {applied}",
                truncated_index + 1
            )));
        }
        let last_index = wal.last_index();
        // The commit index is not written on every change; everything applied was committed.
        hard_state.commit = hard_state.commit.max(applied);
        let tail_start = last_index
            .saturating_sub(TAIL_CACHE_ENTRIES as u64)
            .max(truncated_index)
            + 1;
        let tail: VecDeque<Entry> = wal.read(tail_start, last_index + 1)?.into();
        Ok(RaftLog {
            state,
            inner: Arc::new(Mutex::new(Inner {
                hard_state,
                conf_state,
                truncated_index,
                truncated_term,
                last_index,
                tail,
                state_synced: applied,
                wal,
            })),
            snapshots: Arc::new(Registry::default()),
        })
    }

    /// Snapshots built for raft and waiting for the transport to stream them.
    pub fn snapshots(&self) -> Arc<Registry> {
        self.snapshots.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic while holding it; the data is still the last written state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once a conf state has been stored (the member was bootstrapped before).
    pub fn is_initialized(&self) -> bool {
        self.lock().conf_state != ConfState::default()
    }

    /// Stores the initial voters of a new cluster, as if a snapshot at index 1, term 1 had been
    /// installed (as every bootstrapping member does the same, they agree). The log then starts
    /// at index 2, so a member added later can never be caught up from index 1 by log entries,
    /// which do not hold the initial configuration: it always receives a snapshot, which does.
    pub fn bootstrap(&self, conf_state: ConfState) -> StorageResult<()> {
        let hard_state = HardState {
            term: 1,
            commit: 1,
            ..Default::default()
        };
        let txn = self.state.begin_write()?;
        {
            let mut applied = txn.open_table(RAFT_APPLIED)?;
            applied.insert(KEY_CONF_STATE, encode(&conf_state)?.as_slice())?;
            applied.insert(KEY_SNAPSHOT, encode_pair(1, 1).as_slice())?;
            txn.open_table(META)?.insert(META_APPLIED_INDEX, 1)?;
        }
        txn.commit()?;
        let mut inner = self.lock();
        inner.wal.reset(&hard_state, 1, 1)?;
        inner.conf_state = conf_state;
        inner.hard_state = hard_state;
        inner.truncated_index = 1;
        inner.truncated_term = 1;
        inner.last_index = 1;
        inner.tail.clear();
        inner.state_synced = 1;
        Ok(())
    }

    /// Records the configuration that applying a conf change produced, inside apply's
    /// transaction `txn` (so it always matches the applied index).
    pub fn stage_conf_state(&self, txn: &WriteTransaction, cs: &ConfState) -> StorageResult<()> {
        txn.open_table(RAFT_APPLIED)?
            .insert(KEY_CONF_STATE, encode(cs)?.as_slice())?;
        self.lock().conf_state = cs.clone();
        Ok(())
    }

    /// Installs a snapshot: in ONE durable transaction of the state database, `fill` replaces
    /// the state machine's tables, and the conf state and applied index move to the snapshot's
    /// (recorded as the last snapshot); then the log restarts after it, durably. A failure in the
    /// first leaves the old state intact; a crash before the second is finished by [`Self::open`].
    pub fn install_snapshot(
        &self,
        meta: &SnapshotMetadata,
        fill: impl FnOnce(&WriteTransaction) -> StorageResult<()>,
    ) -> StorageResult<()> {
        let mut inner = self.lock();
        let mut hard_state = inner.hard_state.clone();
        hard_state.term = hard_state.term.max(meta.term);
        hard_state.commit = hard_state.commit.max(meta.index);
        let mut txn = self.state.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        fill(&txn)?;
        {
            let mut applied = txn.open_table(RAFT_APPLIED)?;
            applied.insert(KEY_CONF_STATE, encode(meta.get_conf_state())?.as_slice())?;
            applied.insert(KEY_SNAPSHOT, encode_pair(meta.index, meta.term).as_slice())?;
            txn.open_table(META)?
                .insert(META_APPLIED_INDEX, meta.index)?;
        }
        txn.commit()?;
        inner.state_synced = meta.index;
        inner.wal.reset(&hard_state, meta.index, meta.term)?;
        inner.conf_state = meta.get_conf_state().clone();
        inner.hard_state = hard_state;
        inner.truncated_index = meta.index;
        inner.truncated_term = meta.term;
        inner.last_index = meta.index;
        inner.tail.clear();
        Ok(())
    }

    pub fn hard_state(&self) -> HardState {
        self.lock().hard_state.clone()
    }

    pub fn conf_state(&self) -> ConfState {
        self.lock().conf_state.clone()
    }

    pub fn last_index(&self) -> u64 {
        self.lock().last_index
    }

    pub fn first_index(&self) -> u64 {
        self.lock().first_index()
    }

    /// Appends `entries` (replacing any conflicting suffix) and stores `hard_state`, durably, in one
    /// transaction. A hard state whose only change is the commit index is kept in memory and not
    /// written: raft-rs allows restoring `commit = max(commit, applied)` at start (see `open`), and
    /// the applied index is stored with the applied data.
    pub fn append(&self, entries: &[Entry], hard_state: Option<&HardState>) -> StorageResult<()> {
        let mut inner = self.lock();
        let vote_or_term_changed = hard_state
            .is_some_and(|hs| hs.term != inner.hard_state.term || hs.vote != inner.hard_state.vote);
        if entries.is_empty() && !vote_or_term_changed {
            if let Some(hs) = hard_state {
                inner.hard_state.commit = inner.hard_state.commit.max(hs.commit);
            }
            return Ok(());
        }
        let started = std::time::Instant::now();
        // A commit-only change is not written.
        inner
            .wal
            .append(entries, hard_state.filter(|_| vote_or_term_changed))?;
        crate::metrics::get()
            .wal_fsync_duration
            .observe(started.elapsed());
        if let Some(first) = entries.first() {
            while inner.tail.back().is_some_and(|e| e.index >= first.index) {
                inner.tail.pop_back();
            }
            if inner
                .tail
                .back()
                .is_some_and(|e| e.index + 1 != first.index)
            {
                inner.tail.clear();
            }
            inner.tail.extend(entries.iter().cloned());
            while inner.tail.len() > TAIL_CACHE_ENTRIES {
                inner.tail.pop_front();
            }
            inner.last_index = entries.last().map_or(inner.last_index, |e| e.index);
        }
        if let Some(hs) = hard_state {
            inner.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records a new commit index (in memory only; see `append`).
    pub fn set_commit(&self, commit: u64) {
        let mut inner = self.lock();
        inner.hard_state.commit = inner.hard_state.commit.max(commit);
    }

    /// The applied index as of the state database's last durable commit made here.
    pub fn state_synced(&self) -> u64 {
        self.lock().state_synced
    }

    /// Makes every commit of the state database so far durable; `applied` is the applied index
    /// now (the raft task applies, so nothing is applied meanwhile).
    pub fn sync_state(&self, applied: u64) -> StorageResult<()> {
        let started = std::time::Instant::now();
        // Default durability (Immediate): persists every earlier non-durable apply commit.
        self.state.begin_write()?.commit()?;
        crate::metrics::get()
            .backend_sync_duration
            .observe(started.elapsed());
        self.lock().state_synced = applied;
        Ok(())
    }

    /// Removes entries before `index` (keeping `index` itself), durably. The state database must
    /// hold everything before `index` durably (see [`Self::sync_state`]): the caller checks.
    pub fn truncate_prefix(&self, index: u64) -> StorageResult<()> {
        let mut inner = self.lock();
        if index <= inner.first_index() || index > inner.last_index {
            return Ok(());
        }
        if index > inner.state_synced + 1 {
            return Err(corrupt(format!(
                "truncating the log to {index} would drop entries the state database does not hold durably (synced at {})",
                inner.state_synced
            )));
        }
        let term = term_of(&inner, index - 1)?;
        inner.wal.truncate_front(index - 1, term)?;
        inner.truncated_index = index - 1;
        inner.truncated_term = term;
        while inner.tail.front().is_some_and(|e| e.index < index) {
            inner.tail.pop_front();
        }
        Ok(())
    }
}

fn encode_pair(a: u64, b: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&a.to_be_bytes());
    v.extend_from_slice(&b.to_be_bytes());
    v
}

fn decode_pair(bytes: &[u8]) -> StorageResult<(u64, u64)> {
    let a: [u8; 8] = bytes
        .get(0..8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt("short truncation record"))?;
    let b: [u8; 8] = bytes
        .get(8..16)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt("short truncation record"))?;
    Ok((u64::from_be_bytes(a), u64::from_be_bytes(b)))
}

/// Moves the raft log of a schema-1 state database (where the WAL `wal` now belongs): entries,
/// hard state and truncation point are written to the WAL (durably), then removed from `state` in
/// the durable transaction that records the conf state and the truncation point as the last
/// snapshot (where the log would restart) and raises the schema. A crash in between leaves the
/// state database as it was, and the move is made again over what the WAL got.
pub(super) fn move_log(state: &Database, wal: &mut Wal) -> StorageResult<()> {
    let from = state.begin_read()?;
    let old_state = from.open_table(RAFT_STATE)?;
    let hard_state: HardState = match old_state.get(KEY_HARD_STATE)? {
        Some(v) => decode(v.value())?,
        None => HardState::default(),
    };
    let truncated = match old_state.get(KEY_TRUNCATED)? {
        Some(v) => decode_pair(v.value())?,
        None => (0, 0),
    };
    wal.reset(&hard_state, truncated.0, truncated.1)?;
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for row in from.open_table(RAFT_LOG)?.iter()? {
        let (_, v) = row?;
        batch_bytes += v.value().len();
        batch.push(decode::<Entry>(v.value())?);
        if batch_bytes >= 64 * 1024 * 1024 {
            wal.append(&batch, None)?;
            batch.clear();
            batch_bytes = 0;
        }
    }
    wal.append(&batch, None)?;
    let conf_state = old_state.get(KEY_CONF_STATE)?.map(|v| v.value().to_vec());
    drop(old_state);
    drop(from);
    let txn = state.begin_write()?;
    {
        let mut applied = txn.open_table(RAFT_APPLIED)?;
        if let Some(cs) = conf_state {
            applied.insert(KEY_CONF_STATE, cs.as_slice())?;
        }
        applied.insert(
            KEY_SNAPSHOT,
            encode_pair(truncated.0, truncated.1).as_slice(),
        )?;
    }
    txn.delete_table(RAFT_LOG)?;
    txn.delete_table(RAFT_STATE)?;
    txn.open_table(META)?.insert(META_SCHEMA, SCHEMA_VERSION)?;
    txn.commit()?;
    Ok(())
}

fn term_of(inner: &Inner, index: u64) -> StorageResult<u64> {
    if index == inner.truncated_index {
        return Ok(inner.truncated_term);
    }
    if let Some(e) = inner.cached(index) {
        return Ok(e.term);
    }
    inner
        .wal
        .term(index)
        .ok_or_else(|| corrupt(format!("missing entry {index}")))
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let inner = self.lock();
        Ok(RaftState::new(
            inner.hard_state.clone(),
            inner.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let inner = self.lock();
        if low < inner.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > inner.last_index + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        if inner.cached(low).is_some() {
            for index in low..high {
                match inner.cached(index) {
                    Some(e) => out.push(e.clone()),
                    None => return Err(store_err(corrupt(format!("cache gap at {index}")))),
                }
            }
        } else {
            out = inner.wal.read(low, high).map_err(store_err)?;
            if out.len() as u64 != high - low {
                return Err(store_err(corrupt(format!(
                    "entries {low}..{high} incomplete"
                ))));
            }
        }
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let inner = self.lock();
        if idx == inner.truncated_index {
            return Ok(inner.truncated_term);
        }
        if idx < inner.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > inner.last_index {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        term_of(&inner, idx).map_err(store_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.lock().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.lock().last_index)
    }

    /// The state as of the applied index, as one read transaction parked for the transport (see
    /// [`crate::storage::snapshot`]); the snapshot's `data` is only its handle.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let build = || -> StorageResult<Option<Snapshot>> {
            let txn = self.state.begin_read()?;
            let applied = txn
                .open_table(META)?
                .get(META_APPLIED_INDEX)?
                .map_or(0, |v| v.value());
            let conf_state: ConfState = match txn.open_table(RAFT_APPLIED)?.get(KEY_CONF_STATE)? {
                Some(v) => decode(v.value())?,
                None => return Ok(None),
            };
            if applied == 0 {
                return Ok(None);
            }
            let term = {
                let inner = self.lock();
                term_of(&inner, applied)?
            };
            let mut snap = Snapshot::default();
            let meta = snap.mut_metadata();
            meta.index = applied;
            meta.term = term;
            meta.set_conf_state(conf_state);
            snap.data = self.snapshots.park(txn).into();
            Ok(Some(snap))
        };
        match build() {
            Ok(Some(snap)) => Ok(snap),
            Ok(None) => Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            )),
            Err(e) => Err(store_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: bytes::Bytes::from(format!("e{index}")),
            ..Default::default()
        }
    }

    fn open_log(dir: &std::path::Path) -> RaftLog {
        let state = crate::storage::open(dir).unwrap();
        let log = crate::storage::open_log(dir, &state).unwrap();
        RaftLog::open(log, state).unwrap()
    }

    fn set_applied(state: &Db, index: u64) {
        let txn = state.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(META_APPLIED_INDEX, index)
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn append_replace_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path());
        assert_eq!((log.first_index(), log.last_index()), (1, 0));
        let ents: Vec<_> = (1..=5).map(|i| entry(i, 1)).collect();
        let hs = HardState {
            term: 1,
            commit: 3,
            ..Default::default()
        };
        log.append(&ents, Some(&hs)).unwrap();
        // A new leader overwrites 4..: the old 4 and 5 are gone.
        log.append(&[entry(4, 2)], None).unwrap();
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.term(4).unwrap(), 2);
        assert_eq!(log.term(3).unwrap(), 1);
        drop(log);
        let log = open_log(dir.path());
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.hard_state().commit, 3);
        let got = log
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(1, 1), (2, 1), (3, 1), (4, 2)]
        );
    }

    #[test]
    fn commit_only_changes_are_not_written_and_restore_from_applied() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path());
        let hs = HardState {
            term: 1,
            commit: 2,
            ..Default::default()
        };
        log.append(&(1..=6).map(|i| entry(i, 1)).collect::<Vec<_>>(), Some(&hs))
            .unwrap();
        log.append(
            &[],
            Some(&HardState {
                commit: 5,
                ..hs.clone()
            }),
        )
        .unwrap();
        log.set_commit(6);
        assert_eq!(log.hard_state().commit, 6);
        // Apply stored index 4 with its data; the commit index on disk is still 2.
        set_applied(&log.state, 4);
        drop(log);
        let log = open_log(dir.path());
        assert_eq!(
            log.hard_state().commit,
            4,
            "commit restored as max(stored, applied)"
        );
        assert_eq!(log.hard_state().term, 1);
    }

    #[test]
    fn truncate_prefix_keeps_term_of_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path());
        let ents: Vec<_> = (1..=10).map(|i| entry(i, i / 4 + 1)).collect();
        log.append(&ents, None).unwrap();
        set_applied(&log.state, 7);
        assert!(
            log.truncate_prefix(6).is_err(),
            "the state database does not hold entry 5 durably yet"
        );
        log.sync_state(7).unwrap();
        log.truncate_prefix(6).unwrap();
        assert_eq!(log.first_index(), 6);
        assert_eq!(log.term(5).unwrap(), 5 / 4 + 1);
        assert!(matches!(
            log.term(4),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        ));
        assert!(matches!(
            log.entries(3, 7, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        ));
        drop(log);
        let log = open_log(dir.path());
        assert_eq!((log.first_index(), log.last_index()), (6, 10));
        assert_eq!(log.term(5).unwrap(), 5 / 4 + 1);
    }

    #[test]
    fn reads_beyond_cache_come_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path());
        let n = TAIL_CACHE_ENTRIES as u64 + 100;
        let ents: Vec<_> = (1..=n).map(|i| entry(i, 1)).collect();
        log.append(&ents, None).unwrap();
        let got = log
            .entries(1, 11, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 10);
        assert_eq!(got[9].data, bytes::Bytes::from("e10"));
        // A size limit still returns at least one entry.
        let got = log
            .entries(1, 11, Some(1), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 1);
    }

    /// Writes the state half of installing a snapshot at (`index`, `term`), as
    /// `install_snapshot` does before it resets the log.
    fn install_state_only(log: &RaftLog, index: u64, term: u64) {
        let txn = log.state.begin_write().unwrap();
        {
            let mut applied = txn.open_table(RAFT_APPLIED).unwrap();
            let cs = ConfState::from((vec![1, 2], vec![]));
            applied
                .insert(KEY_CONF_STATE, encode(&cs).unwrap().as_slice())
                .unwrap();
            applied
                .insert(KEY_SNAPSHOT, encode_pair(index, term).as_slice())
                .unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_APPLIED_INDEX, index)
                .unwrap();
        }
        txn.commit().unwrap();
    }

    /// A bootstrapped log holding entries `2..=last` of `term`, over which the state half of a
    /// snapshot at index 50, term 3 was installed before a crash; reopened.
    fn reopened_after_half_an_install(dir: &std::path::Path, last: u64, term: u64) -> RaftLog {
        let log = open_log(dir);
        log.bootstrap(ConfState::from((vec![1, 2, 3], vec![])))
            .unwrap();
        log.append(
            &(2..=last).map(|i| entry(i, term)).collect::<Vec<_>>(),
            None,
        )
        .unwrap();
        install_state_only(&log, 50, 3);
        drop(log);
        open_log(dir)
    }

    #[test]
    fn a_crash_between_the_two_halves_of_a_snapshot_install_restarts_the_log_after_it() {
        let dir = tempfile::tempdir().unwrap();
        // The log ends at 5, before the snapshot.
        let log = reopened_after_half_an_install(dir.path(), 5, 1);
        assert_eq!((log.first_index(), log.last_index()), (51, 50));
        assert_eq!(log.term(50).unwrap(), 3);
        assert_eq!(log.hard_state().term, 3);
        assert_eq!(log.hard_state().commit, 50);
        assert_eq!(log.conf_state().voters, vec![1, 2]);
    }

    #[test]
    fn a_log_conflicting_with_an_installed_snapshot_restarts_after_it() {
        // A deposed leader's entries reach past the snapshot, with another term at its index.
        let dir = tempfile::tempdir().unwrap();
        let log = reopened_after_half_an_install(dir.path(), 60, 1);
        assert_eq!((log.first_index(), log.last_index()), (51, 50));
        assert_eq!(log.term(50).unwrap(), 3);

        // Entries that agree with the snapshot at its index are kept.
        let dir = tempfile::tempdir().unwrap();
        let log = reopened_after_half_an_install(dir.path(), 60, 3);
        assert_eq!((log.first_index(), log.last_index()), (2, 60));
    }

    #[test]
    fn a_schema_one_database_has_its_log_moved() {
        let dir = tempfile::tempdir().unwrap();
        // What schema 1 wrote: the log, hard state, conf state and truncation point in the state
        // database.
        {
            let db = redb::Database::create(dir.path().join(crate::storage::DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut l = txn.open_table(RAFT_LOG).unwrap();
                for i in 2..=9 {
                    l.insert(i, encode(&entry(i, 2)).unwrap().as_slice())
                        .unwrap();
                }
                let mut st = txn.open_table(RAFT_STATE).unwrap();
                let hs = HardState {
                    term: 2,
                    vote: 3,
                    commit: 7,
                    ..Default::default()
                };
                st.insert(KEY_HARD_STATE, encode(&hs).unwrap().as_slice())
                    .unwrap();
                let cs = ConfState::from((vec![1, 2, 3], vec![]));
                st.insert(KEY_CONF_STATE, encode(&cs).unwrap().as_slice())
                    .unwrap();
                st.insert(KEY_TRUNCATED, encode_pair(1, 1).as_slice())
                    .unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(META_SCHEMA, 1).unwrap();
                meta.insert(META_APPLIED_INDEX, 7).unwrap();
            }
            txn.commit().unwrap();
        }
        let log = open_log(dir.path());
        assert_eq!((log.first_index(), log.last_index()), (2, 9));
        assert_eq!(log.term(9).unwrap(), 2);
        assert_eq!((log.hard_state().term, log.hard_state().vote), (2, 3));
        assert_eq!(log.conf_state().voters, vec![1, 2, 3]);
        assert_eq!(
            crate::storage::read_meta(&log.state.get(), META_SCHEMA).unwrap(),
            SCHEMA_VERSION
        );
        let txn = log.state.begin_read().unwrap();
        assert!(
            txn.open_table(RAFT_LOG).is_err(),
            "the log left the state database"
        );
        drop(txn);
        drop(log);
        // Opening again changes nothing.
        let log = open_log(dir.path());
        assert_eq!((log.first_index(), log.last_index()), (2, 9));
    }
}
