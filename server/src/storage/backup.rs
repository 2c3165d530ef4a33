//! Backups (Maintenance.Snapshot) and restoring one as a new cluster.
//!
//! Contract:
//! - A backup is the state of one redb read transaction: a `BackupHeader` (revision, compaction
//!   point, raft index, ids), then the same rows as a raft snapshot (see [`super::snapshot`]), then
//!   zero padding, then a 32-byte trailer: the length of the data before the padding (u64) and its
//!   crc32 (u32), both big endian, and 20 zero bytes. The padding makes the file length 32 more
//!   than a multiple of 512, the shape of an etcd snapshot (a bbolt file followed by its sha256),
//!   which is all `etcdctl snapshot save` checks; so etcdctl can take Conclave backups too. It is
//!   written as a stream ([`write`]); nothing is held in memory.
//! - [`verify`] checks the length and crc32 and reads the header and the row counts.
//! - [`restore`] builds a NEW data dir from a verified backup: the identity and member table come
//!   from the new cluster's `--initial-cluster` (as a fresh bootstrap), the key-value history, the
//!   leases and the compaction point from the backup. Every member of the new cluster restores the
//!   same file with its own name and starts as if just bootstrapped, holding the data.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use conclave_proto::conclave::internal::v1::{BackupHeader, snapshot_row::Row};
use prost::Message as _;
use raft::prelude::ConfState;
use redb::{ReadTransaction, ReadableTable};

use super::raft_log::RaftLog;
use super::snapshot::{self, read_frame, read_row};
use super::{META, META_APPLIED_INDEX, META_COMPACTED_REV, MVCC, StorageError, StorageResult};
use crate::membership::{InitialMember, Membership};

/// `BackupHeader.magic`.
pub const MAGIC: &str = "conclave-backup";
/// The format this version writes and reads.
pub const FORMAT: u32 = 1;
/// Length, crc32 and zeros at the end of the file.
const TRAILER_BYTES: u64 = 32;
/// The file length is `TRAILER_BYTES` more than a multiple of this.
const ALIGN: u64 = 512;

fn corrupt(detail: impl ToString) -> StorageError {
    StorageError::Corrupt {
        table: "backup",
        detail: detail.to_string(),
    }
}

/// Passes bytes on while counting them and computing their crc32.
struct Summing<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the backup of `txn` to `out`; `cluster_id` and `member_id` name where it was taken.
/// Returns its length in bytes.
pub fn write(
    txn: &ReadTransaction,
    cluster_id: u64,
    member_id: u64,
    out: &mut impl Write,
) -> StorageResult<u64> {
    let meta = txn.open_table(META)?;
    let raft_index = meta.get(META_APPLIED_INDEX)?.map_or(0, |v| v.value());
    let compact_revision = meta.get(META_COMPACTED_REV)?.map_or(0, |v| v.value()) as i64;
    let revision = txn
        .open_table(MVCC)?
        .last()?
        .map_or(compact_revision, |(k, _)| k.value().0 as i64);
    let header = BackupHeader {
        magic: MAGIC.into(),
        format: FORMAT,
        revision,
        compact_revision,
        raft_index,
        cluster_id,
        member_id,
    };
    let mut sum = Summing {
        inner: out,
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
    };
    sum.write_all(&header.encode_length_delimited_to_vec())?;
    snapshot::write_rows(txn, &mut sum)?;
    let (bytes, crc) = (sum.bytes, sum.hasher.finalize());
    let out = sum.inner;
    let padding = (ALIGN - bytes % ALIGN) % ALIGN;
    out.write_all(&vec![0u8; padding as usize])?;
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    trailer[..8].copy_from_slice(&bytes.to_be_bytes());
    trailer[8..12].copy_from_slice(&crc.to_be_bytes());
    out.write_all(&trailer)?;
    out.flush()?;
    Ok(bytes + padding + TRAILER_BYTES)
}

/// The length `write` will produce for `txn` (a first pass that writes nowhere).
pub fn size(txn: &ReadTransaction) -> StorageResult<u64> {
    write(txn, 0, 0, &mut std::io::sink())
}

/// What a verified backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub header: BackupHeader,
    /// crc32 of the backup (without its trailer).
    pub crc32: u32,
    /// Keys whose newest row is a put (live keys at the backup's revision).
    pub keys: u64,
    /// MVCC rows (all revisions kept).
    pub rows: u64,
    /// The file's length.
    pub bytes: u64,
    /// The length of the header and rows.
    pub data_bytes: u64,
}

/// Checks a backup file's length and crc32 and reads its header and counts.
pub fn verify(path: &Path) -> StorageResult<BackupInfo> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < TRAILER_BYTES {
        return Err(corrupt(format!("{} bytes: too short", len)));
    }
    file.seek(SeekFrom::Start(len - TRAILER_BYTES))?;
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    file.read_exact(&mut trailer)?;
    let stated_len = u64::from_be_bytes(trailer[..8].try_into().map_err(corrupt)?);
    let stated_crc = u32::from_be_bytes(trailer[8..12].try_into().map_err(corrupt)?);
    let padding = (ALIGN - stated_len % ALIGN) % ALIGN;
    if stated_len + padding + TRAILER_BYTES != len || trailer[12..].iter().any(|b| *b != 0) {
        return Err(corrupt(format!(
            "{len} bytes, but the trailer says {stated_len} bytes of data: truncated or not a Conclave backup"
        )));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut body = BufReader::with_capacity(256 * 1024, file).take(stated_len);
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let crc = hasher.finalize();
    if crc != stated_crc {
        return Err(corrupt(format!(
            "crc32 {crc:08x}, the trailer says {stated_crc:08x}: the file is damaged"
        )));
    }
    let mut body = open_body(path, stated_len)?;
    let header = read_header(&mut body)?;
    let mut live = std::collections::HashMap::<Vec<u8>, bool>::new();
    let mut rows = 0;
    while let Some(row) = read_row(&mut body)? {
        if let Some(Row::Mvcc(r)) = row.row {
            rows += 1;
            let (kind, kv) = r
                .value
                .split_first()
                .ok_or_else(|| corrupt("empty MVCC row"))?;
            let kv = conclave_proto::mvccpb::KeyValue::decode(kv).map_err(corrupt)?;
            live.insert(kv.key, *kind == 0);
        }
    }
    Ok(BackupInfo {
        header,
        crc32: crc,
        keys: live.values().filter(|l| **l).count() as u64,
        rows,
        bytes: len,
        data_bytes: stated_len,
    })
}

/// Whether the file at `path` starts like a Conclave backup (its header's magic), whatever the
/// state of the rest. (An etcd server's Snapshot is a bbolt file instead.)
pub fn is_conclave_backup(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut input = BufReader::new(file).take(4096);
    read_frame(&mut input)
        .ok()
        .flatten()
        .and_then(|f| BackupHeader::decode(f.as_slice()).ok())
        .is_some_and(|h| h.magic == MAGIC)
}

/// The backup's data (without the trailer), buffered.
fn open_body(path: &Path, len: u64) -> StorageResult<std::io::Take<BufReader<File>>> {
    Ok(BufReader::with_capacity(256 * 1024, File::open(path)?).take(len))
}

fn read_header(input: &mut impl Read) -> StorageResult<BackupHeader> {
    let frame = read_frame(input)?.ok_or_else(|| corrupt("no header"))?;
    let header = BackupHeader::decode(frame.as_slice()).map_err(corrupt)?;
    if header.magic != MAGIC {
        return Err(corrupt("not a Conclave backup (bad magic)"));
    }
    if header.format > FORMAT {
        return Err(corrupt(format!(
            "backup format {} is newer than this version's ({FORMAT})",
            header.format
        )));
    }
    Ok(header)
}

/// Why a restore was refused.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} already exists; restore builds a new data dir")]
    DataDirExists(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Bootstrap(#[from] crate::membership::BootstrapError),
}

/// Builds a new data dir at `data_dir` for member `name` of the new cluster `initial` (with
/// `token`) from the backup at `path`. Returns what the backup held.
pub fn restore(
    path: &Path,
    data_dir: &Path,
    name: &str,
    initial: &[InitialMember],
    token: &str,
) -> Result<BackupInfo, RestoreError> {
    let info = verify(path)?;
    if data_dir.exists() {
        return Err(RestoreError::DataDirExists(data_dir.display().to_string()));
    }
    let db = super::open(data_dir)?;
    let (membership, _, _) = Membership::open_or_bootstrap(&db.get(), name, initial, token)?;
    let voters: Vec<u64> = membership.list().iter().map(|m| m.id).collect();
    RaftLog::open(super::open_log(data_dir, &db)?, db.clone())?
        .bootstrap(ConfState::from((voters, vec![])))?;
    let mut body = open_body(path, info.data_bytes)?;
    read_header(&mut body)?;
    let txn = db.begin_write().map_err(StorageError::from)?;
    snapshot::load(&txn, &mut body, false)?;
    txn.commit().map_err(StorageError::from)?;
    Ok(info)
}

/// Writes a backup of `db` to a file (for tests and tools that have the database at hand).
pub fn write_file(db: &redb::Database, path: &Path) -> StorageResult<u64> {
    use redb::ReadableDatabase;
    let txn = db.begin_read()?;
    let mut out = BufWriter::new(File::create(path)?);
    let n = write(&txn, 0, 0, &mut out)?;
    out.into_inner()
        .map_err(|e| StorageError::Io(e.into_error()))?
        .sync_all()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage;
    use redb::ReadableDatabase;

    fn source() -> (tempfile::TempDir, std::sync::Arc<redb::Database>) {
        let dir = tempfile::tempdir().unwrap();
        let db = storage::open(dir.path()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut mvcc = txn.open_table(MVCC).unwrap();
            for (i, key) in ["a", "b", "a"].iter().enumerate() {
                let kv = conclave_proto::mvccpb::KeyValue {
                    key: key.as_bytes().to_vec(),
                    value: b"v".to_vec(),
                    mod_revision: i as i64 + 2,
                    ..Default::default()
                };
                let mut row = vec![0u8];
                kv.encode(&mut row).unwrap();
                mvcc.insert((i as u64 + 2, 0), row.as_slice()).unwrap();
            }
            txn.open_table(META)
                .unwrap()
                .insert(META_APPLIED_INDEX, 17)
                .unwrap();
        }
        txn.commit().unwrap();
        (dir, db.get())
    }

    #[test]
    fn a_backup_verifies_and_restores_as_a_new_cluster() {
        let (dir, db) = source();
        let file = dir.path().join("b.backup");
        let n = write_file(&db, &file).unwrap();
        assert_eq!(n, std::fs::metadata(&file).unwrap().len());
        assert_eq!(
            n % 512,
            32,
            "etcdctl's shape: 512-byte blocks and a 32-byte checksum"
        );
        assert_eq!(n, size(&db.begin_read().unwrap()).unwrap());
        let info = verify(&file).unwrap();
        assert_eq!(info.header.revision, 4);
        assert_eq!(info.header.raft_index, 17);
        assert_eq!((info.keys, info.rows), (2, 3));

        let target = dir.path().join("restored");
        let initial = vec![InitialMember {
            name: "r1".into(),
            peer_urls: vec!["http://127.0.0.1:1".into()],
        }];
        restore(&file, &target, "r1", &initial, "new").unwrap();
        let restored = storage::open(&target).unwrap();
        let read = restored.begin_read().unwrap();
        assert_eq!(read.open_table(MVCC).unwrap().iter().unwrap().count(), 3);
        // A fresh bootstrap: applied index 1, the log starts after it.
        assert_eq!(
            storage::read_meta(&restored.get(), META_APPLIED_INDEX).unwrap(),
            1
        );
        // Restoring onto an existing dir is refused.
        let again = restore(&file, &target, "r1", &initial, "new");
        assert!(matches!(again, Err(RestoreError::DataDirExists(_))));
    }

    #[test]
    fn a_damaged_or_truncated_backup_is_refused() {
        let (dir, db) = source();
        let file = dir.path().join("b.backup");
        write_file(&db, &file).unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        assert!(verify(&file).unwrap_err().to_string().contains("damaged"));
        bytes.truncate(bytes.len() - 30);
        std::fs::write(&file, &bytes).unwrap();
        assert!(verify(&file).is_err());
    }
}
