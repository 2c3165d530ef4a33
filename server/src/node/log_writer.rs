//! Appends to the raft log on a thread of its own, so that the raft task can apply the committed
//! entries of a Ready while that Ready's entries are being made durable.
//!
//! Contract: at most one append is in flight; [`LogWriter::begin`] hands it over and
//! [`LogWriter::finish`] waits until it is durable (or failed), and must be called before the next
//! `begin` and before anything that depends on the append (the persisted messages, advancing
//! raft-rs). Overlapping is safe because raft-rs hands out as committed only entries this member
//! has already persisted (`min(committed, persisted)`), never ones of the append under way.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use raft::prelude::{Entry, HardState};

use crate::storage::raft_log::RaftLog;
use crate::storage::{StorageError, StorageResult};

struct Append {
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
}

/// The log's append thread. Dropping it lets the thread finish and joins it.
pub struct LogWriter {
    appends: Option<SyncSender<Append>>,
    done: Receiver<StorageResult<()>>,
    in_flight: bool,
    thread: Option<JoinHandle<()>>,
}

fn writer_gone() -> StorageError {
    StorageError::Io(std::io::Error::other(
        "the raft log's append thread stopped",
    ))
}

impl LogWriter {
    /// Starts the thread appending to `log`.
    pub fn start(log: RaftLog) -> std::io::Result<Self> {
        let (appends, jobs) = sync_channel::<Append>(1);
        let (results, done) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || {
                for job in jobs {
                    let outcome = log.append(&job.entries, job.hard_state.as_ref());
                    if results.send(outcome).is_err() {
                        return;
                    }
                }
            })?;
        Ok(LogWriter {
            appends: Some(appends),
            done,
            in_flight: false,
            thread: Some(thread),
        })
    }

    /// Hands an append over to the thread; [`Self::finish`] reports its outcome.
    pub fn begin(
        &mut self,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    ) -> StorageResult<()> {
        if self.in_flight {
            self.finish()?;
        }
        let appends = self.appends.as_ref().ok_or_else(writer_gone)?;
        appends
            .send(Append {
                entries,
                hard_state,
            })
            .map_err(|_| writer_gone())?;
        self.in_flight = true;
        Ok(())
    }

    /// Waits until the append handed over last is durable; Ok at once if none is in flight.
    pub fn finish(&mut self) -> StorageResult<()> {
        if !std::mem::take(&mut self.in_flight) {
            return Ok(());
        }
        self.done.recv().map_err(|_| writer_gone())?
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.appends = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn open_log(dir: &std::path::Path) -> RaftLog {
        let state = crate::storage::open(dir).unwrap();
        let wal = crate::storage::open_log(dir, &state).unwrap();
        RaftLog::open(wal, state).unwrap()
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    #[test]
    fn appends_are_durable_in_order_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path());
        let mut writer = LogWriter::start(log.clone()).unwrap();
        let hs = HardState {
            term: 2,
            vote: 1,
            ..Default::default()
        };
        writer
            .begin(vec![entry(1, 2), entry(2, 2)], Some(hs.clone()))
            .unwrap();
        // A second append waits for the first: they land in order.
        writer.begin(vec![entry(3, 2)], None).unwrap();
        writer.finish().unwrap();
        // Nothing in flight: finishing again is a no-op.
        writer.finish().unwrap();
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.hard_state().term, 2);
        assert_eq!(log.hard_state().vote, 1);
        let got = log
            .entries(1, 4, None, raft::GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got, vec![entry(1, 2), entry(2, 2), entry(3, 2)]);
        drop(writer);
        // Reopened from disk, the entries are there.
        drop(log);
        let log = open_log(dir.path());
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.hard_state().term, 2);
    }
}
