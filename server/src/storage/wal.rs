//! The raft log's write-ahead log: append-only segment files in `<data-dir>/wal/`.
//!
//! Contract:
//! - [`Wal::append`], [`Wal::truncate_front`] and [`Wal::reset`] return only once what they wrote
//!   is on disk (`fdatasync`); a crash at any moment loses nothing they returned for.
//! - [`Wal::open`] replays every segment and returns the log as the last completed call left it.
//!   A record cut short by a crash (only ever the last one written) is discarded and overwritten.
//! - The caller (the raft task, through `RaftLog`) is the only writer.
//!
//! Layout: segments `<seq>.wal` (16 hex digits), each preallocated with zeros to
//! [`SEGMENT_BYTES`] by a background thread before it is needed, so that an append never changes a
//! file's size and its `fdatasync` flushes data only. A record is `[len u32][crc32 u32][kind u8]
//! [body]` (little-endian; `len` counts kind and body, the crc covers them); a zero `len` ends a
//! segment. Kinds: entries (one append: consecutive entries, each length-prefixed, replacing any
//! entries from the first one's index on), hard state, front truncation (index, term), and reset
//! (empty log restarting after index, term). Every segment starts with a checkpoint (the hard
//! state and truncation point when it was opened), so a segment whose entries are all truncated
//! can be deleted without losing anything.
//!
//! Why not redb (the first versions kept the log in redb): a durable redb commit rewrites a
//! handful of B-tree and allocator pages scattered over the file; appending one record to a
//! preallocated file writes one. With three members on one disk, a commit took 0.54 ms (p50) and
//! an append 0.30 ms (docs/architecture.md).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use protobuf::Message as _;
use raft::prelude::{Entry, HardState};

use super::{StorageError, StorageResult, sync_dir};

/// Size every segment is preallocated to. A record that does not fit in what is left of the
/// current segment goes to the next one; a record larger than a segment makes its segment grow.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// The segment being prepared, inside the WAL directory.
const SPARE: &str = "spare.tmp";
const HEADER: usize = 8;

const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_TRUNCATED: u8 = 3;
const KIND_RESET: u8 = 4;

fn corrupt(detail: impl ToString) -> StorageError {
    StorageError::Corrupt {
        table: "wal",
        detail: detail.to_string(),
    }
}

/// Where one entry lives.
#[derive(Debug, Clone, Copy)]
struct Position {
    seq: u64,
    offset: u64,
    len: u32,
    term: u64,
}

struct Segment {
    seq: u64,
    file: File,
    /// The highest entry index written to this segment (0: none).
    max_index: u64,
}

/// The write-ahead log of one member.
pub struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// Where the next record goes in the last segment.
    offset: u64,
    /// Entries `first..=last` in order; `first` is `truncated.0 + 1`.
    positions: VecDeque<Position>,
    first: u64,
    hard_state: HardState,
    truncated: (u64, u64),
    /// The next segment, being zero-filled by a thread.
    spare: Option<JoinHandle<std::io::Result<File>>>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

/// Creates the spare segment file, zero-filled and synced, on a thread.
fn prepare_spare(dir: &Path) -> JoinHandle<std::io::Result<File>> {
    let path = dir.join(SPARE);
    std::thread::spawn(move || {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        // One page per write: the page cache sizes a file's folios after the writes that create
        // them, and a folio is written back whole. Zero-filled with 1 MiB writes, a segment sat in
        // large folios, and every append's fdatasync wrote one of them out: ~27 KB written to disk
        // per put instead of the record (a member's 60,000 puts: 1.65 GB of writes, now 43 MB).
        let zeros = vec![0u8; 4096];
        for _ in 0..SEGMENT_BYTES / zeros.len() as u64 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
        Ok(file)
    })
}

fn record(kind: u8, body: &[u8]) -> StorageResult<Vec<u8>> {
    let len = u32::try_from(body.len() + 1)
        .map_err(|_| corrupt(format!("a record of {} bytes is too large", body.len())))?;
    let mut out = Vec::with_capacity(HEADER + 1 + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(body);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    Ok(out)
}

fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    out
}

fn read_pair(body: &[u8]) -> StorageResult<(u64, u64)> {
    let get = |r: std::ops::Range<usize>| -> StorageResult<u64> {
        let bytes: [u8; 8] = body
            .get(r)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| corrupt("short index/term record"))?;
        Ok(u64::from_le_bytes(bytes))
    };
    Ok((get(0..8)?, get(8..16)?))
}

/// One record read back: its kind, body, and where the body starts in the file.
struct Read {
    kind: u8,
    body: Vec<u8>,
    body_offset: u64,
    next: u64,
}

/// Reads the record at `offset`; `None` at the end of the segment's records (zeros, or a record
/// cut short or damaged: the caller decides which that may be).
fn read_record(file: &File, size: u64, offset: u64) -> std::io::Result<Option<Read>> {
    if offset + HEADER as u64 + 1 > size {
        return Ok(None);
    }
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, offset)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || offset + HEADER as u64 + len > size {
        return Ok(None);
    }
    let mut data = vec![0u8; len as usize];
    file.read_exact_at(&mut data, offset + HEADER as u64)?;
    if crc32fast::hash(&data) != crc {
        return Ok(None);
    }
    let kind = data[0];
    data.remove(0);
    Ok(Some(Read {
        kind,
        body: data,
        body_offset: offset + HEADER as u64 + 1,
        next: offset + HEADER as u64 + len,
    }))
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir` and replays it.
    pub fn open(dir: &Path) -> StorageResult<Wal> {
        std::fs::create_dir_all(dir)?;
        // The directory's own entry must be durable before anything in it is relied on.
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let mut seqs = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let name = item?.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name.strip_suffix(".wal") {
                seqs.push(
                    u64::from_str_radix(hex, 16)
                        .map_err(|_| corrupt(format!("unexpected file {name}")))?,
                );
            }
        }
        seqs.sort_unstable();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            offset: 0,
            positions: VecDeque::new(),
            first: 1,
            hard_state: HardState::default(),
            truncated: (0, 0),
            spare: None,
        };
        // Replayed positions by index; gaps are allowed until the end (a deleted segment's
        // entries were all truncated, and a later record says so).
        let mut entries = std::collections::BTreeMap::<u64, Position>::new();
        let count = seqs.len();
        for (i, seq) in seqs.into_iter().enumerate() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(segment_path(dir, seq))?;
            let size = file.metadata()?.len();
            let mut offset = 0;
            let mut max_index = 0;
            while let Some(r) = read_record(&file, size, offset)? {
                wal.replay(seq, &r, &mut entries, &mut max_index)?;
                offset = r.next;
            }
            let last = i + 1 == count;
            if !last && has_data_after(&file, size, offset)? {
                return Err(corrupt(format!(
                    "segment {seq:016x}: damaged record at offset {offset}"
                )));
            }
            if last {
                // Whatever follows the last whole record was cut short by a crash: zero it, so
                // that a later replay never mistakes it for records.
                zero_from(&file, size, offset)?;
                wal.offset = offset;
            }
            wal.segments.push(Segment {
                seq,
                file,
                max_index,
            });
        }
        let (truncated, _) = wal.truncated;
        for (expected, (index, pos)) in (truncated + 1..).zip(entries.range(truncated + 1..)) {
            if *index != expected {
                return Err(corrupt(format!("entry {expected} is missing")));
            }
            wal.positions.push_back(*pos);
        }
        wal.first = truncated + 1;
        wal.spare = Some(prepare_spare(dir));
        if wal.segments.is_empty() {
            // The first segment is the spare, zero-filled like every other.
            wal.rotate()?;
        } else if wal.offset == 0 {
            // A crash right after a rotation left the newest segment without its checkpoint.
            wal.write_checkpoint()?;
        }
        Ok(wal)
    }

    fn replay(
        &mut self,
        seq: u64,
        r: &Read,
        entries: &mut std::collections::BTreeMap<u64, Position>,
        max_index: &mut u64,
    ) -> StorageResult<()> {
        match r.kind {
            KIND_ENTRIES => {
                let mut at = 0usize;
                let mut first = true;
                while at < r.body.len() {
                    let len_bytes: [u8; 4] = r
                        .body
                        .get(at..at + 4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| corrupt("short entry length"))?;
                    let len = u32::from_le_bytes(len_bytes);
                    let bytes = r
                        .body
                        .get(at + 4..at + 4 + len as usize)
                        .ok_or_else(|| corrupt("short entry"))?;
                    let e = Entry::parse_from_bytes(bytes).map_err(corrupt)?;
                    if first {
                        // Log matching: an append replaces everything from its first index on.
                        entries.split_off(&e.index);
                        first = false;
                    }
                    entries.insert(
                        e.index,
                        Position {
                            seq,
                            offset: r.body_offset + at as u64 + 4,
                            len,
                            term: e.term,
                        },
                    );
                    *max_index = (*max_index).max(e.index);
                    at += 4 + len as usize;
                }
            }
            KIND_HARD_STATE => {
                self.hard_state = HardState::parse_from_bytes(&r.body).map_err(corrupt)?;
            }
            KIND_TRUNCATED => {
                let (index, term) = read_pair(&r.body)?;
                *entries = entries.split_off(&(index + 1));
                self.truncated = (index, term);
            }
            KIND_RESET => {
                entries.clear();
                self.truncated = read_pair(&r.body)?;
            }
            other => return Err(corrupt(format!("unknown record kind {other}"))),
        }
        Ok(())
    }

    /// The last hard state written.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Index and term of the last entry removed from the front (0, 0 for a whole log).
    pub fn truncated(&self) -> (u64, u64) {
        self.truncated
    }

    /// Index of the last entry (the truncation point when there is none).
    pub fn last_index(&self) -> u64 {
        self.first + self.positions.len() as u64 - 1
    }

    /// Term of entry `index`, if the WAL holds it.
    pub fn term(&self, index: u64) -> Option<u64> {
        let i = index.checked_sub(self.first)?;
        self.positions.get(i as usize).map(|p| p.term)
    }

    /// Reads entries `low..high` (all held by the WAL: the caller checks the bounds).
    pub fn read(&self, low: u64, high: u64) -> StorageResult<Vec<Entry>> {
        let mut out = Vec::with_capacity((high - low) as usize);
        for index in low..high {
            let pos = index
                .checked_sub(self.first)
                .and_then(|i| self.positions.get(i as usize))
                .ok_or_else(|| corrupt(format!("entry {index} is not in the log")))?;
            let segment = self
                .segments
                .iter()
                .find(|s| s.seq == pos.seq)
                .ok_or_else(|| corrupt(format!("segment of entry {index} is gone")))?;
            let mut bytes = vec![0u8; pos.len as usize];
            segment.file.read_exact_at(&mut bytes, pos.offset)?;
            out.push(Entry::parse_from_bytes(&bytes).map_err(corrupt)?);
        }
        Ok(out)
    }

    /// Appends `entries` (replacing any entries from the first one's index on) and, if given, a
    /// new hard state; durable when it returns.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> StorageResult<()> {
        let mut records = Vec::new();
        let mut entry_offsets = Vec::new();
        if let Some(first) = entries.first() {
            if first.index < self.first || first.index > self.last_index() + 1 {
                return Err(corrupt(format!(
                    "append at {} to a log holding {}..={}",
                    first.index,
                    self.first,
                    self.last_index()
                )));
            }
            let mut body = Vec::new();
            for e in entries {
                let bytes = e.write_to_bytes().map_err(corrupt)?;
                let len = u32::try_from(bytes.len())
                    .map_err(|_| corrupt(format!("entry {} is too large", e.index)))?;
                body.extend_from_slice(&len.to_le_bytes());
                entry_offsets.push((body.len() as u64, len, e.index, e.term));
                body.extend_from_slice(&bytes);
            }
            records.push(record(KIND_ENTRIES, &body)?);
        }
        if let Some(hs) = hard_state {
            records.push(record(
                KIND_HARD_STATE,
                &hs.write_to_bytes().map_err(corrupt)?,
            )?);
        }
        if records.is_empty() {
            return Ok(());
        }
        let bytes: Vec<u8> = records.concat();
        let at = self.write(&bytes)?;
        if let Some(first) = entries.first() {
            self.positions.truncate((first.index - self.first) as usize);
            // The entries record comes first: its body starts after its header and kind byte.
            let body_at = at + HEADER as u64 + 1;
            let seq = self.current().seq;
            for (offset, len, index, term) in entry_offsets {
                self.positions.push_back(Position {
                    seq,
                    offset: body_at + offset,
                    len,
                    term,
                });
                let segment = self.current_mut();
                segment.max_index = segment.max_index.max(index);
            }
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Drops entries up to `index` (of `term`), durably, and deletes the segments that held only
    /// such entries.
    pub fn truncate_front(&mut self, index: u64, term: u64) -> StorageResult<()> {
        self.write(&record(KIND_TRUNCATED, &pair(index, term))?)?;
        let drop = index
            .saturating_sub(self.first - 1)
            .min(self.positions.len() as u64);
        self.positions.drain(..drop as usize);
        self.first = index + 1;
        self.truncated = (index, term);
        self.delete_old_segments()
    }

    /// Empties the log, durably, so that it restarts after `index` (of `term`), with `hard_state`.
    pub fn reset(&mut self, hard_state: &HardState, index: u64, term: u64) -> StorageResult<()> {
        let mut bytes = record(KIND_RESET, &pair(index, term))?;
        bytes.extend(record(
            KIND_HARD_STATE,
            &hard_state.write_to_bytes().map_err(corrupt)?,
        )?);
        self.write(&bytes)?;
        self.positions.clear();
        self.first = index + 1;
        self.truncated = (index, term);
        self.hard_state = hard_state.clone();
        self.delete_old_segments()
    }

    fn current(&self) -> &Segment {
        // `open` always leaves at least one segment.
        self.segments
            .last()
            .unwrap_or_else(|| unreachable!("the WAL has a segment"))
    }

    fn current_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .unwrap_or_else(|| unreachable!("the WAL has a segment"))
    }

    /// Writes `bytes` (whole records) at the end of the log and syncs; returns where they went.
    fn write(&mut self, bytes: &[u8]) -> StorageResult<u64> {
        if self.offset + bytes.len() as u64 > SEGMENT_BYTES && self.offset > 0 {
            self.rotate()?;
        }
        let at = self.offset;
        let segment = self.current();
        segment.file.write_all_at(bytes, at)?;
        // A record beyond the preallocated size grew the file: then the size must be synced too.
        if at + bytes.len() as u64 > SEGMENT_BYTES {
            segment.file.sync_all()?;
        } else {
            segment.file.sync_data()?;
        }
        self.offset = at + bytes.len() as u64;
        Ok(at)
    }

    /// Starts a new segment (the spare one when ready) beginning with a checkpoint of the hard
    /// state and the truncation point.
    fn rotate(&mut self) -> StorageResult<()> {
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let path = segment_path(&self.dir, seq);
        let file = match self.spare.take().map(JoinHandle::join) {
            Some(Ok(Ok(file))) => {
                std::fs::rename(self.dir.join(SPARE), &path)?;
                file
            }
            prepared => {
                if let Some(Ok(Err(e))) = prepared {
                    tracing::warn!(error = %e, "could not prepare a WAL segment; creating one now");
                }
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&path)?;
                file.set_len(SEGMENT_BYTES)?;
                file.sync_all()?;
                file
            }
        };
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            seq,
            file,
            max_index: 0,
        });
        self.offset = 0;
        self.write_checkpoint()?;
        self.spare = Some(prepare_spare(&self.dir));
        Ok(())
    }

    /// Writes the hard state and the truncation point at the start of the (empty) current
    /// segment.
    fn write_checkpoint(&mut self) -> StorageResult<()> {
        let mut checkpoint = record(
            KIND_HARD_STATE,
            &self.hard_state.write_to_bytes().map_err(corrupt)?,
        )?;
        checkpoint.extend(record(
            KIND_TRUNCATED,
            &pair(self.truncated.0, self.truncated.1),
        )?);
        let segment = self.current();
        segment.file.write_all_at(&checkpoint, 0)?;
        segment.file.sync_data()?;
        self.offset = checkpoint.len() as u64;
        Ok(())
    }

    /// Deletes every segment but the current one whose entries are all at or before the
    /// truncation point (later segments start with a checkpoint, so nothing else is lost).
    fn delete_old_segments(&mut self) -> StorageResult<()> {
        let truncated = self.truncated.0;
        let mut deleted = false;
        while self.segments.len() > 1 && self.segments[0].max_index <= truncated {
            let s = self.segments.remove(0);
            std::fs::remove_file(segment_path(&self.dir, s.seq))?;
            deleted = true;
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl Drop for Wal {
    /// Waits for the spare segment's zero-filling: a WAL opened next on the same directory
    /// prepares its spare under the same name, which must not still be written to.
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            let _ = spare.join();
        }
    }
}

/// Whether anything but zeros follows `offset` in the file.
fn has_data_after(file: &File, size: u64, offset: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = offset;
    while at < size {
        let n = ((size - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(true);
        }
        at += n as u64;
    }
    Ok(false)
}

/// Overwrites the file from `offset` to `size` with zeros where it is not zero already, durably.
fn zero_from(file: &File, size: u64, offset: u64) -> std::io::Result<()> {
    if has_data_after(file, size, offset)? {
        let zeros = vec![0u8; 64 * 1024];
        let mut at = offset;
        while at < size {
            let n = ((size - at) as usize).min(zeros.len());
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &str) -> Entry {
        Entry {
            index,
            term,
            data: bytes::Bytes::from(data.to_string()),
            ..Default::default()
        }
    }

    fn terms(wal: &Wal) -> Vec<(u64, u64)> {
        (wal.first..=wal.last_index())
            .map(|i| (i, wal.term(i).unwrap()))
            .collect()
    }

    fn hs(term: u64, vote: u64) -> HardState {
        HardState {
            term,
            vote,
            ..Default::default()
        }
    }

    #[test]
    fn appends_overwrites_and_truncations_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            assert_eq!((wal.truncated(), wal.last_index()), ((0, 0), 0));
            let ents: Vec<_> = (1..=6).map(|i| entry(i, 1, "a")).collect();
            wal.append(&ents, Some(&hs(1, 2))).unwrap();
            // A new leader overwrites 5..
            wal.append(&[entry(5, 2, "b")], Some(&hs(2, 3))).unwrap();
            wal.truncate_front(2, 1).unwrap();
            assert_eq!(terms(&wal), vec![(3, 1), (4, 1), (5, 2)]);
        }
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.truncated(), (2, 1));
        assert_eq!(wal.last_index(), 5);
        assert_eq!((wal.hard_state().term, wal.hard_state().vote), (2, 3));
        assert_eq!(terms(&wal), vec![(3, 1), (4, 1), (5, 2)]);
        let read = wal.read(3, 6).unwrap();
        assert_eq!(read[2].data, bytes::Bytes::from("b"));
        assert_eq!(read[0].data, bytes::Bytes::from("a"));
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_dropped_and_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let seg;
        let end;
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            wal.append(&[entry(1, 1, "one")], None).unwrap();
            end = wal.offset;
            seg = segment_path(dir.path(), wal.current().seq);
            wal.append(&[entry(2, 1, "two")], None).unwrap();
        }
        // Tear the second record: its last bytes never reached the disk.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        let mut wal = {
            let mut torn = vec![0u8; 4];
            file.read_exact_at(&mut torn, end).unwrap();
            let len = u32::from_le_bytes(torn.try_into().unwrap()) as u64;
            file.write_all_at(&[0u8; 3], end + HEADER as u64 + len - 3)
                .unwrap();
            Wal::open(dir.path()).unwrap()
        };
        assert_eq!(wal.last_index(), 1);
        wal.append(&[entry(2, 2, "2")], None).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.last_index(), 2);
        assert_eq!(wal.read(1, 3).unwrap()[1].data, bytes::Bytes::from("2"));
    }

    #[test]
    fn damage_before_the_last_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            wal.append(&[entry(1, 1, "one")], None).unwrap();
            wal.rotate().unwrap();
            wal.append(&[entry(2, 1, "two")], None).unwrap();
        }
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 1))
            .unwrap();
        file.write_all_at(b"xx", HEADER as u64 + 3).unwrap();
        let err = Wal::open(dir.path()).err().unwrap();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn segments_rotate_and_truncated_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let big = "x".repeat(1024 * 1024);
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            wal.append(&[], Some(&hs(4, 1))).unwrap();
            for i in 1..=40 {
                wal.append(&[entry(i, 4, &big)], None).unwrap();
            }
            assert!(wal.segments.len() >= 3, "{} segments", wal.segments.len());
            wal.truncate_front(35, 4).unwrap();
            assert_eq!(wal.segments.len(), 1, "only the current segment is left");
        }
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.truncated(), (35, 4));
        assert_eq!(wal.last_index(), 40);
        assert_eq!(wal.hard_state().term, 4, "kept by the checkpoint");
        assert_eq!(wal.read(36, 41).unwrap().len(), 5);
    }

    #[test]
    fn a_segment_left_empty_by_a_crash_gets_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            wal.append(&[entry(1, 1, "a")], Some(&hs(5, 1))).unwrap();
            // A crash right after the spare became the next segment, before its checkpoint.
            let next = segment_path(dir.path(), wal.current().seq + 1);
            std::fs::write(next, vec![0u8; 4096]).unwrap();
        }
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            wal.append(&[entry(2, 1, "b")], None).unwrap();
            wal.truncate_front(1, 1).unwrap();
            assert_eq!(wal.segments.len(), 1, "the first segment is deleted");
        }
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!((wal.hard_state().term, wal.hard_state().vote), (5, 1));
        assert_eq!((wal.truncated(), wal.last_index()), ((1, 1), 2));
    }

    #[test]
    fn reset_restarts_the_log_after_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            wal.append(&(1..=9).map(|i| entry(i, 1, "a")).collect::<Vec<_>>(), None)
                .unwrap();
            wal.reset(&hs(3, 0), 5, 2).unwrap();
            wal.append(&[entry(6, 3, "n")], None).unwrap();
        }
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.truncated(), (5, 2));
        assert_eq!(terms(&wal), vec![(6, 3)]);
        assert_eq!(wal.hard_state().term, 3);
    }
}
