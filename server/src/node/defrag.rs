//! Defragmentation as the raft task runs it (the storage side is `storage::defrag`): the copy is
//! made on a thread of its own while the member serves; the raft task, the only writer, brings it
//! up to date and swaps it in between two of its writes. Requests arriving while one runs wait
//! for it. A compaction during the copy makes it stale; it is copied again (a few times at most).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::ServerError;
use crate::storage::defrag::{self, Copy};
use crate::storage::{self, Db, StorageError, StorageResult};

/// Copies made before giving up because compactions keep making them stale.
const MAX_ATTEMPTS: u32 = 3;

/// What a finished defragmentation did.
#[derive(Debug, Clone)]
pub struct DefragReport {
    pub before_bytes: u64,
    pub after_bytes: u64,
    /// Time spent copying while the member served.
    pub copy: Duration,
    /// Time writes waited while the copy was caught up and swapped in.
    pub pause: Duration,
}

/// Where the answer to one Defragment request goes.
pub type DefragReply = oneshot::Sender<Result<DefragReport, ServerError>>;

/// The defragmentation under way, if any.
pub struct Defragmenter {
    db: Db,
    data_dir: PathBuf,
    running: Option<Run>,
}

struct Run {
    replies: Vec<DefragReply>,
    copied: oneshot::Receiver<StorageResult<Copy>>,
    attempts: u32,
    before_bytes: u64,
    copy_time: Duration,
}

impl Defragmenter {
    pub fn new(db: Db, data_dir: PathBuf) -> Self {
        Defragmenter {
            db,
            data_dir,
            running: None,
        }
    }

    /// Starts a defragmentation, or joins the one under way.
    pub fn request(&mut self, reply: DefragReply) {
        if let Some(run) = &mut self.running {
            run.replies.push(reply);
            return;
        }
        match self.start_copy() {
            Ok(copied) => {
                self.running = Some(Run {
                    replies: vec![reply],
                    copied,
                    attempts: 1,
                    before_bytes: storage::file_size(&self.data_dir),
                    copy_time: Duration::ZERO,
                });
                tracing::info!("defragmentation started");
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// Waits for the copy under way (forever if none is).
    pub async fn copied(&mut self) -> StorageResult<Copy> {
        match &mut self.running {
            Some(run) => (&mut run.copied).await.unwrap_or_else(|_| {
                Err(StorageError::Io(std::io::Error::other(
                    "the defragmentation copy stopped",
                )))
            }),
            None => std::future::pending().await,
        }
    }

    /// Finishes the run with its copy: catch up and swap in, or copy again if stale. Call from
    /// the raft task between two of its writes. An error is returned only when the member must
    /// stop (see `storage::defrag::install`).
    pub fn finish(&mut self, copy: StorageResult<Copy>) -> StorageResult<()> {
        let Some(mut run) = self.running.take() else {
            return Ok(());
        };
        let copy = match copy {
            Ok(copy) => copy,
            Err(e) => {
                tracing::warn!(error = %e, "defragmentation failed while copying");
                run.answer(Err(e.into()));
                return Ok(());
            }
        };
        run.copy_time += copy.elapsed;
        let started = Instant::now();
        let caught_up = match defrag::catch_up(&self.db, copy) {
            Ok(Some(caught_up)) => caught_up,
            Ok(None) if run.attempts < MAX_ATTEMPTS => {
                tracing::info!("a compaction ran while copying; copying again");
                match self.start_copy() {
                    Ok(copied) => {
                        run.copied = copied;
                        run.attempts += 1;
                        self.running = Some(run);
                    }
                    Err(e) => run.answer(Err(e.into())),
                }
                return Ok(());
            }
            Ok(None) => {
                run.answer(Err(ServerError::DefragRetry));
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "defragmentation failed while catching up");
                run.answer(Err(e.into()));
                return Ok(());
            }
        };
        defrag::install(&self.db, &self.data_dir, caught_up)?;
        let report = DefragReport {
            before_bytes: run.before_bytes,
            after_bytes: storage::file_size(&self.data_dir),
            copy: run.copy_time,
            pause: started.elapsed(),
        };
        tracing::info!(
            before_bytes = report.before_bytes,
            after_bytes = report.after_bytes,
            copy_ms = report.copy.as_millis() as u64,
            pause_ms = report.pause.as_secs_f64() * 1000.0,
            "defragmented"
        );
        let metrics = crate::metrics::get();
        metrics.defrag_pause.observe(report.pause);
        metrics.defrag_duration.observe(report.copy + report.pause);
        run.answer(Ok(report));
        Ok(())
    }

    /// Begins a read transaction here (so the copy starts from what the raft task has written)
    /// and copies it on a thread of its own.
    fn start_copy(&self) -> StorageResult<oneshot::Receiver<StorageResult<Copy>>> {
        let from = self.db.begin_read()?;
        let db = self.db.clone();
        let data_dir = self.data_dir.clone();
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("conclave-defrag".into())
            .spawn(move || {
                let _ = tx.send(defrag::copy(&db, from, &data_dir));
            })?;
        Ok(rx)
    }
}

impl Run {
    fn answer(self, result: Result<DefragReport, ServerError>) {
        for reply in self.replies {
            let _ = reply.send(result.clone());
        }
    }
}
