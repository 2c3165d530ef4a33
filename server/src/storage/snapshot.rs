//! Raft snapshots of the state machine: what a member far behind (or new) receives instead of the
//! log entries that were truncated.
//!
//! Contract:
//! - A snapshot is the state of one redb read transaction: the MVCC history, the member table
//!   (with the ids of removed members), the leases and the compacted revision, all as of the applied index stored in that same
//!   transaction. It is written as a stream of length-delimited `SnapshotRow`s ([`write_rows`]) and
//!   never held in memory as a whole: the sender produces it while sending, the receiver writes it
//!   to a file ([`Receiving`]) and checks every chunk's crc32 and the whole's length and crc32.
//! - Installing ([`load_rows`]) replaces the state tables inside ONE write transaction (that of
//!   `RaftLog::install_snapshot`), so a crash mid-install leaves the old state intact.
//! - The leader's raft-rs asks for a snapshot through `raft::Storage::snapshot`; the read
//!   transaction is parked in the [`Registry`] under a handle that travels as the raft snapshot's
//!   `data`, and the transport takes it out to stream it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use conclave_proto::conclave::internal::v1::{
    LeaseRow, MemberRecord, MvccRow, SnapshotRow, snapshot_row::Row,
};
use prost::Message as _;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::{
    ALARMS, LEASES, MEMBERS, META, META_COMPACTED_REV, MVCC, REMOVED_MEMBERS, StorageError,
    StorageResult,
};

/// Size of one chunk on the wire.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// A parked snapshot not taken by the transport within this time is dropped (raft asks again).
const PARKED_FOR: Duration = Duration::from_secs(120);
/// Largest single row accepted when reading a snapshot (a row holds one key-value).
const MAX_ROW_BYTES: u64 = 64 * 1024 * 1024;

fn corrupt(detail: impl ToString) -> StorageError {
    StorageError::Corrupt {
        table: "snapshot",
        detail: detail.to_string(),
    }
}

/// Read transactions waiting to be streamed, by handle.
#[derive(Default)]
pub struct Registry {
    parked: Mutex<HashMap<u64, (Instant, ReadTransaction)>>,
}

impl Registry {
    /// Parks `txn` and returns its handle (the raft snapshot's `data`).
    pub fn park(&self, txn: ReadTransaction) -> Vec<u8> {
        let handle = rand::random::<u64>();
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        parked.retain(|_, (at, _)| at.elapsed() < PARKED_FOR);
        parked.insert(handle, (Instant::now(), txn));
        handle.to_be_bytes().to_vec()
    }

    /// Takes the transaction parked under `data`, if it is still there.
    pub fn take(&self, data: &[u8]) -> Option<ReadTransaction> {
        let handle = u64::from_be_bytes(data.try_into().ok()?);
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        // Expired ones go here too: a parked transaction holds its database (an old one, after a
        // defragmentation) open.
        parked.retain(|_, (at, _)| at.elapsed() < PARKED_FOR);
        parked.remove(&handle).map(|(_, txn)| txn)
    }
}

fn write_row(out: &mut impl Write, row: Row) -> StorageResult<()> {
    let bytes = SnapshotRow { row: Some(row) }.encode_length_delimited_to_vec();
    out.write_all(&bytes)?;
    Ok(())
}

/// Writes the state of `txn` to `out` as length-delimited rows.
pub fn write_rows(txn: &ReadTransaction, out: &mut impl Write) -> StorageResult<()> {
    let compacted = txn
        .open_table(META)?
        .get(META_COMPACTED_REV)?
        .map_or(0, |v| v.value());
    write_row(out, Row::CompactedRevision(compacted))?;
    for row in txn.open_table(MEMBERS)?.iter()? {
        let (_, v) = row?;
        let member = MemberRecord::decode(v.value()).map_err(corrupt)?;
        write_row(out, Row::Member(member))?;
    }
    for row in txn.open_table(REMOVED_MEMBERS)?.iter()? {
        let (id, _) = row?;
        write_row(out, Row::RemovedMember(id.value()))?;
    }
    for row in txn.open_table(ALARMS)?.iter()? {
        let (k, _) = row?;
        let (member_id, alarm) = k.value();
        write_row(
            out,
            Row::Alarm(conclave_proto::etcdserverpb::AlarmMember { member_id, alarm }),
        )?;
    }
    for row in txn.open_table(LEASES)?.iter()? {
        let (id, v) = row?;
        let (ttl, remaining) = v.value();
        write_row(
            out,
            Row::Lease(LeaseRow {
                id: id.value(),
                ttl,
                remaining,
            }),
        )?;
    }
    for row in txn.open_table(MVCC)?.iter()? {
        let (k, v) = row?;
        let (main, sub) = k.value();
        write_row(
            out,
            Row::Mvcc(MvccRow {
                main,
                sub,
                value: v.value().to_vec(),
            }),
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Reads one varint-length-prefixed frame; `None` at a clean end of input.
pub fn read_frame(input: &mut impl Read) -> StorageResult<Option<Vec<u8>>> {
    let mut len: u64 = 0;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8; 1];
        match input.read(&mut byte)? {
            0 if shift == 0 => return Ok(None),
            0 => return Err(corrupt("truncated row length")),
            _ => {}
        }
        len |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    if len > MAX_ROW_BYTES {
        return Err(corrupt(format!("row of {len} bytes")));
    }
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Reads one row; `None` at a clean end of input.
pub fn read_row(input: &mut impl Read) -> StorageResult<Option<SnapshotRow>> {
    match read_frame(input)? {
        Some(buf) => SnapshotRow::decode(buf.as_slice())
            .map(Some)
            .map_err(corrupt),
        None => Ok(None),
    }
}

/// Replaces the state tables in `txn` with the rows of the snapshot file at `path`. The caller
/// commits (or, on error, drops) the transaction: the old state stays until then.
pub fn load_rows(txn: &WriteTransaction, path: &Path) -> StorageResult<()> {
    let mut input = BufReader::with_capacity(256 * 1024, File::open(path)?);
    load(txn, &mut input, true)
}

/// Replaces the state tables in `txn` with the rows read from `input`; the member table and
/// removed ids too if `with_members` (a raft snapshot), otherwise their rows are skipped (a
/// backup restored as a new cluster, which has its own members).
pub fn load(
    txn: &WriteTransaction,
    input: &mut impl Read,
    with_members: bool,
) -> StorageResult<()> {
    txn.delete_table(MVCC)?;
    txn.delete_table(LEASES)?;
    if with_members {
        txn.delete_table(MEMBERS)?;
        txn.delete_table(REMOVED_MEMBERS)?;
        txn.delete_table(ALARMS)?;
    }
    let mut alarms = txn.open_table(ALARMS)?;
    let mut mvcc = txn.open_table(MVCC)?;
    let mut members = txn.open_table(MEMBERS)?;
    let mut removed = txn.open_table(REMOVED_MEMBERS)?;
    let mut leases = txn.open_table(LEASES)?;
    let mut meta = txn.open_table(META)?;
    meta.remove(META_COMPACTED_REV)?;
    while let Some(row) = read_row(input)? {
        match row.row {
            Some(Row::CompactedRevision(rev)) => {
                meta.insert(META_COMPACTED_REV, rev)?;
            }
            Some(Row::Member(m)) => {
                if with_members {
                    members.insert(m.id, m.encode_to_vec().as_slice())?;
                }
            }
            Some(Row::RemovedMember(id)) => {
                if with_members {
                    removed.insert(id, ())?;
                }
            }
            Some(Row::Alarm(a)) => {
                if with_members {
                    alarms.insert((a.member_id, a.alarm), ())?;
                }
            }
            Some(Row::Lease(l)) => {
                leases.insert(l.id, (l.ttl, l.remaining))?;
            }
            Some(Row::Mvcc(r)) => {
                mvcc.insert((r.main, r.sub), r.value.as_slice())?;
            }
            None => return Err(corrupt("empty row")),
        }
    }
    Ok(())
}

/// Where a received snapshot of (`term`, `index`) is kept until raft installs it.
pub fn file_path(dir: &Path, term: u64, index: u64) -> PathBuf {
    dir.join(format!("{term:016x}-{index:016x}.snap"))
}

/// Removes snapshot files left by an earlier run (received but never installed, or half written).
pub fn clear_dir(dir: &Path) -> StorageResult<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// A snapshot being received: chunks are checked and appended to `<final>.partial`; `finish`
/// checks the whole, syncs it and renames it into place.
pub struct Receiving {
    partial: PathBuf,
    target: PathBuf,
    out: BufWriter<File>,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl Receiving {
    pub fn create(target: PathBuf) -> StorageResult<Receiving> {
        let partial = target.with_extension("partial");
        let out = BufWriter::with_capacity(256 * 1024, File::create(&partial)?);
        Ok(Receiving {
            partial,
            target,
            out,
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
        })
    }

    /// Appends one chunk after checking its crc32.
    pub fn chunk(&mut self, data: &[u8], crc: u32) -> StorageResult<()> {
        if crc32fast::hash(data) != crc {
            return Err(corrupt(format!(
                "chunk at byte {} fails its crc32 check",
                self.bytes
            )));
        }
        self.out.write_all(data)?;
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Checks the total length and crc32, makes the file durable and moves it into place.
    pub fn finish(mut self, total_bytes: u64, total_crc: u32) -> StorageResult<PathBuf> {
        let crc = self.hasher.clone().finalize();
        if total_bytes != self.bytes || total_crc != crc {
            let _ = std::fs::remove_file(&self.partial);
            return Err(corrupt(format!(
                "received {} bytes with crc32 {crc:08x}, the sender sent {total_bytes} with {total_crc:08x}",
                self.bytes
            )));
        }
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        std::fs::rename(&self.partial, &self.target)?;
        Ok(self.target.clone())
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        // Unfinished (or finished: the partial name is gone by then).
        let _ = std::fs::remove_file(&self.partial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage;
    use redb::ReadableTableMetadata;

    fn fill(db: &redb::Database) {
        let txn = db.begin_write().unwrap();
        {
            let mut mvcc = txn.open_table(MVCC).unwrap();
            for i in 0..500u64 {
                mvcc.insert((i + 2, 0), vec![0u8; (i % 7) as usize].as_slice())
                    .unwrap();
            }
            txn.open_table(LEASES).unwrap().insert(7, (10, 4)).unwrap();
            txn.open_table(REMOVED_MEMBERS)
                .unwrap()
                .insert(5, ())
                .unwrap();
            let m = MemberRecord {
                id: 3,
                name: "n3".into(),
                ..Default::default()
            };
            txn.open_table(MEMBERS)
                .unwrap()
                .insert(3, m.encode_to_vec().as_slice())
                .unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_COMPACTED_REV, 42)
                .unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn rows_round_trip_through_chunks_and_replace_the_old_state() {
        let src_dir = tempfile::tempdir().unwrap();
        let src = storage::open(src_dir.path()).unwrap();
        fill(&src.get());
        let mut bytes = Vec::new();
        write_rows(&src.begin_read().unwrap(), &mut bytes).unwrap();

        let dst_dir = tempfile::tempdir().unwrap();
        let dst = storage::open(dst_dir.path()).unwrap();
        // Old state that must disappear.
        let txn = dst.begin_write().unwrap();
        txn.open_table(MVCC)
            .unwrap()
            .insert((9999, 0), b"old".as_slice())
            .unwrap();
        txn.commit().unwrap();

        let target = file_path(dst_dir.path(), 2, 9);
        let mut rx = Receiving::create(target.clone()).unwrap();
        for chunk in bytes.chunks(333) {
            rx.chunk(chunk, crc32fast::hash(chunk)).unwrap();
        }
        let path = rx
            .finish(bytes.len() as u64, crc32fast::hash(&bytes))
            .unwrap();
        assert_eq!(path, target);
        let txn = dst.begin_write().unwrap();
        load_rows(&txn, &path).unwrap();
        txn.commit().unwrap();

        let read = dst.begin_read().unwrap();
        let mvcc = read.open_table(MVCC).unwrap();
        assert_eq!(mvcc.len().unwrap(), 500);
        assert!(mvcc.get((9999, 0)).unwrap().is_none());
        assert_eq!(
            read.open_table(LEASES)
                .unwrap()
                .get(7)
                .unwrap()
                .unwrap()
                .value(),
            (10, 4)
        );
        assert_eq!(read.open_table(MEMBERS).unwrap().len().unwrap(), 1);
        assert!(
            read.open_table(REMOVED_MEMBERS)
                .unwrap()
                .get(5)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            storage::read_meta(&dst.get(), META_COMPACTED_REV).unwrap(),
            42
        );
    }

    #[test]
    fn a_damaged_chunk_or_a_short_stream_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut rx = Receiving::create(file_path(dir.path(), 1, 1)).unwrap();
        assert!(rx.chunk(b"abc", crc32fast::hash(b"abd")).is_err());
        drop(rx);
        let mut rx = Receiving::create(file_path(dir.path(), 1, 2)).unwrap();
        rx.chunk(b"abc", crc32fast::hash(b"abc")).unwrap();
        assert!(rx.finish(4, crc32fast::hash(b"abcd")).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_install_that_fails_half_way_leaves_the_old_state() {
        let dir = tempfile::tempdir().unwrap();
        let db = storage::open(dir.path()).unwrap();
        fill(&db.get());
        let mut bytes = Vec::new();
        write_rows(&db.begin_read().unwrap(), &mut bytes).unwrap();
        let path = dir.path().join("cut.snap");
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(load_rows(&txn, &path).is_err());
        drop(txn);
        let read = db.begin_read().unwrap();
        assert_eq!(read.open_table(MVCC).unwrap().len().unwrap(), 500);
    }

    #[test]
    fn the_registry_hands_a_transaction_out_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = storage::open(dir.path()).unwrap();
        let reg = Registry::default();
        let handle = reg.park(db.begin_read().unwrap());
        assert!(reg.take(&handle).is_some());
        assert!(reg.take(&handle).is_none());
        assert!(reg.take(b"short").is_none());
    }
}
