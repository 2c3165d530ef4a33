//! The hub's background task: catches lagging watchers up from MVCC history, cancels watchers
//! whose next revision was compacted (with `compact_revision`), sends `progress_notify` and
//! pending progress responses, and ends streams whose client stopped reading.

use std::sync::Arc;
use std::time::Duration;

use conclave_proto::etcdserverpb::WatchResponse;
use conclave_proto::mvccpb::Event;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

use super::{Position, WatchHub, WatchSpec, offer, response};
use crate::mvcc::{MvccError, Store};

/// How often the task looks at lagging watchers when not woken.
const TICK: Duration = Duration::from_millis(50);
/// History read for one watcher in one step, at most (in event bytes; whole revisions).
const CHUNK_BYTES: usize = 1024 * 1024;

struct Work {
    stream: u64,
    watch_id: i64,
    spec: WatchSpec,
    next: i64,
}

/// Runs until `stop` turns true.
pub async fn run(hub: Arc<WatchHub>, store: Arc<Store>, mut stop: watch::Receiver<bool>) {
    let mut last_notify = Instant::now();
    loop {
        tokio::select! {
            _ = hub.lagging.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        // Catch up until nothing progresses (a slow stream stays lagging until the next tick).
        while catch_up_once(&hub, &store) {
            tokio::task::yield_now().await;
        }
        let now = Instant::now();
        let notify_due = now >= last_notify + hub.settings.progress_interval;
        if notify_due {
            last_notify = now;
        }
        hub.housekeeping(now, notify_due);
    }
}

/// One pass over the lagging watchers; tells whether any made progress.
pub(super) fn catch_up_once(hub: &WatchHub, store: &Store) -> bool {
    let work: Vec<Work> = {
        let inner = hub.lock();
        inner
            .streams
            .iter()
            .flat_map(|(sid, s)| {
                s.watchers
                    .iter()
                    .filter_map(move |(id, w)| match w.position {
                        Position::Lagging { next } => Some(Work {
                            stream: *sid,
                            watch_id: *id,
                            spec: w.spec.clone(),
                            next,
                        }),
                        Position::Synced { .. } => None,
                    })
            })
            .collect()
    };
    let mut progressed = false;
    for job in work {
        let read = store.history(job.spec.range(), job.next, job.spec.prev_kv, CHUNK_BYTES);
        progressed |= hub.deliver(job, read, store.compacted_revision());
    }
    progressed
}

impl WatchHub {
    /// Delivers one history read to a lagging watcher, if it is still where the read started.
    fn deliver(
        &self,
        job: Work,
        read: Result<(Vec<Event>, i64), MvccError>,
        compacted: i64,
    ) -> bool {
        let now = Instant::now();
        let max = self.settings.max_response_bytes;
        let mut inner = self.lock();
        let revision = inner.revision;
        let Some(s) = inner.streams.get_mut(&job.stream) else {
            return false;
        };
        let still_there = s
            .watchers
            .get(&job.watch_id)
            .is_some_and(|w| w.position == Position::Lagging { next: job.next });
        if !still_there {
            return false;
        }
        match read {
            Err(MvccError::Compacted) => {
                let resp = WatchResponse {
                    header: Some(self.header(revision)),
                    watch_id: job.watch_id,
                    // The oldest revision a new watch can start from. A watch *at* the compaction
                    // point is refused (compaction dropped deletes made at it, and previous
                    // values), so answering the compaction point itself would send a client that
                    // resumes from `compact_revision`, as etcd's docs advise, round in circles.
                    compact_revision: compacted + 1,
                    // etcd sends no reason: clients recognise compaction by this field.
                    canceled: true,
                    ..Default::default()
                };
                if s.offer(vec![resp], now) {
                    s.watchers.remove(&job.watch_id);
                    return true;
                }
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "reading watch history; ending the stream");
                if let Some(abort) = s.abort.take() {
                    let _ = abort.send(Status::internal(format!(
                        "conclave: cannot read watch history: {e}"
                    )));
                }
                s.watchers.clear();
                false
            }
            Ok((events, scanned)) => {
                let events: Vec<_> = events
                    .iter()
                    .filter(|e| job.spec.wants(e))
                    .map(|e| job.spec.shape(e))
                    .collect();
                if !events.is_empty() {
                    let header = self.header(scanned);
                    let responses =
                        response::pack(job.watch_id, events, header, job.spec.fragment, max);
                    if !offer(&s.outbox, &mut s.blocked_since, responses, now) {
                        return false;
                    }
                }
                let next = scanned + 1;
                let position = if next > revision {
                    Position::Synced { from: next }
                } else {
                    Position::Lagging { next }
                };
                if let Some(w) = s.watchers.get_mut(&job.watch_id) {
                    w.position = position;
                }
                if matches!(position, Position::Synced { .. }) {
                    self.answer_progress(s, revision, now);
                }
                true
            }
        }
    }

    /// Periodic work: progress notifications (when `notify_due`), pending progress requests, and
    /// ending streams blocked past the slow-consumer timeout.
    pub(super) fn housekeeping(&self, now: Instant, notify_due: bool) {
        let mut inner = self.lock();
        let revision = inner.revision;
        let timeout = self.settings.slow_stream_timeout;
        inner.streams.retain(|id, s| {
            if s.outbox.is_closed() {
                return false;
            }
            if s.blocked_since.is_some_and(|since| now >= since + timeout) {
                tracing::warn!(
                    stream = id,
                    "ending a watch stream whose client stopped reading"
                );
                if let Some(abort) = s.abort.take() {
                    let _ = abort.send(Status::resource_exhausted(format!(
                        "conclave: watch stream ended: the client read nothing for {}s \
                         (slow consumer); re-watch from the last received revision + 1",
                        timeout.as_secs()
                    )));
                }
                return false;
            }
            if notify_due {
                let ids: Vec<i64> = s
                    .watchers
                    .iter()
                    .filter(|(_, w)| {
                        w.spec.progress_notify && matches!(w.position, Position::Synced { .. })
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for watch_id in ids {
                    let resp = WatchResponse {
                        header: Some(self.header(revision)),
                        watch_id,
                        ..Default::default()
                    };
                    if !s.offer(vec![resp], now) {
                        break;
                    }
                }
            }
            if s.progress_requested {
                self.answer_progress(s, revision, now);
            }
            true
        });
    }
}
