//! The watch hub: every watch of every client stream on this member.
//!
//! Contract (etcd's guarantees, see docs/guarantees.md): per watch, events arrive in revision
//! order, each exactly once, without gaps, one revision never split across responses (unless
//! `fragment`), and a progress response at revision R means every event up to R was delivered.
//!
//! How: apply calls [`WatchHub::publish`] after each commit; under the hub's lock it makes the new
//! revision visible to readers and pushes the events to every *synced* watcher with `try_send` —
//! apply never waits for a client. A watcher whose stream buffer is full becomes *lagging*,
//! remembering the first revision it has not received; the catch-up task ([`catch_up`]) reads its
//! missed events from MVCC history in bounded chunks and moves it back to synced once it reaches
//! the published revision (the check and the move happen under the lock, so nothing published in
//! between is missed or repeated). A stream that accepts nothing for the slow-consumer timeout is
//! ended with an error naming the reason; the client resumes from its last revision + 1.
//! Each stream's buffer holds a bounded number of responses, each of bounded size.

pub mod catch_up;
pub mod response;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use conclave_proto::etcdserverpb::{ResponseHeader, WatchResponse};
use conclave_proto::mvccpb::{Event, event::EventType};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;

use crate::mvcc::{KeyRange, Store};

/// Responses buffered per stream before its watchers fall back to catching up from history.
pub const STREAM_BUFFER: usize = 128;
/// The watch id of a stream-wide progress response (etcd's `InvalidWatchID`).
pub const PROGRESS_WATCH_ID: i64 = -1;

/// What goes to a client stream.
pub type Outbox = mpsc::Sender<Result<WatchResponse, Status>>;
/// Identifies a client stream inside the hub.
pub type StreamId = u64;

/// Produces full response headers (cluster, member, term) for a revision.
pub type HeaderFn = Box<dyn Fn(i64) -> ResponseHeader + Send + Sync>;

/// Settings of the hub.
#[derive(Debug, Clone, Copy)]
pub struct HubSettings {
    /// Largest response built from events (the member's --max-request-bytes).
    pub max_response_bytes: usize,
    /// Interval of `progress_notify` responses.
    pub progress_interval: Duration,
    /// A stream that accepts nothing for this long is ended.
    pub slow_stream_timeout: Duration,
}

/// What a watch selects and how it wants its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    /// etcd's convention: empty = `key` alone, `[0]` = every key >= `key`.
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

impl WatchSpec {
    fn range(&self) -> KeyRange<'_> {
        KeyRange::new(&self.key, &self.range_end)
    }

    /// Whether the watch wants `e` at all.
    fn wants(&self, e: &Event) -> bool {
        let put = e.r#type == EventType::Put as i32;
        if (put && self.no_put) || (!put && self.no_delete) {
            return false;
        }
        e.kv.as_ref()
            .is_some_and(|kv| self.range().contains(&kv.key))
    }

    /// The event as this watch delivers it.
    fn shape(&self, e: &Event) -> Event {
        let mut e = e.clone();
        if !self.prev_kv {
            e.prev_kv = None;
        }
        e
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Receives events as they are published, from revision `from` on.
    Synced { from: i64 },
    /// Has received everything before `next`; catches up from history.
    Lagging { next: i64 },
}

struct Watcher {
    spec: WatchSpec,
    position: Position,
}

struct Stream {
    outbox: Outbox,
    abort: Option<oneshot::Sender<Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_auto_id: i64,
    progress_requested: bool,
    /// Since when the buffer has been found full, with nothing accepted since.
    blocked_since: Option<Instant>,
}

impl Stream {
    /// Whether a watch of this stream receives published events with previous values.
    fn wants_prev_kv(&self) -> bool {
        self.watchers
            .values()
            .any(|w| w.spec.prev_kv && matches!(w.position, Position::Synced { .. }))
    }
}

/// Hands all `responses` to `outbox` or none of them (so a revision sent in fragments is never
/// cut short); tells whether they were taken. A closed outbox counts as taken (the stream is being
/// removed). Tracks since when the stream has been blocked.
fn offer(
    outbox: &Outbox,
    blocked_since: &mut Option<Instant>,
    responses: Vec<WatchResponse>,
    now: Instant,
) -> bool {
    match outbox.try_reserve_many(responses.len()) {
        Ok(permits) => {
            for (permit, resp) in permits.zip(responses) {
                permit.send(Ok(resp));
            }
            *blocked_since = None;
            true
        }
        Err(mpsc::error::TrySendError::Closed(())) => true,
        Err(mpsc::error::TrySendError::Full(())) => {
            blocked_since.get_or_insert(now);
            false
        }
    }
}

impl Stream {
    fn offer(&mut self, responses: Vec<WatchResponse>, now: Instant) -> bool {
        offer(&self.outbox, &mut self.blocked_since, responses, now)
    }
}

struct Inner {
    /// The newest published revision.
    revision: i64,
    streams: HashMap<StreamId, Stream>,
}

/// Why a watch could not be created (etcd's texts, sent as `cancel_reason`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
}

/// All watches of this member.
pub struct WatchHub {
    inner: Mutex<Inner>,
    header: HeaderFn,
    settings: HubSettings,
    next_stream: AtomicU64,
    lagging: Notify,
}

impl WatchHub {
    /// A hub whose published revision starts at `revision` (the store's on start).
    pub fn new(revision: i64, header: HeaderFn, settings: HubSettings) -> WatchHub {
        WatchHub {
            inner: Mutex::new(Inner {
                revision,
                streams: HashMap::new(),
            }),
            header,
            settings,
            next_stream: AtomicU64::new(1),
            lagging: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Held for map updates and non-blocking sends only; a panic cannot leave it half-done in
        // a way that breaks the guarantees (the member stops on an apply panic).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A full response header at `revision` (0 = the newest published).
    pub fn header(&self, revision: i64) -> ResponseHeader {
        (self.header)(revision)
    }

    /// The hub's settings.
    pub fn settings(&self) -> HubSettings {
        self.settings
    }

    /// Registers a client stream. `abort` receives the status that ends the stream if the
    /// client stops reading.
    pub fn open_stream(&self, outbox: Outbox) -> (StreamId, oneshot::Receiver<Status>) {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (abort_tx, abort_rx) = oneshot::channel();
        self.lock().streams.insert(
            id,
            Stream {
                outbox,
                abort: Some(abort_tx),
                watchers: BTreeMap::new(),
                next_auto_id: 0,
                progress_requested: false,
                blocked_since: None,
            },
        );
        (id, abort_rx)
    }

    /// Ends every client stream with `status` (a stopping member: watch streams never end by
    /// themselves, and their clients resume on another member).
    pub fn end_all_streams(&self, status: &Status) {
        for stream in self.lock().streams.values_mut() {
            if let Some(abort) = stream.abort.take() {
                let _ = abort.send(status.clone());
            }
        }
    }

    /// Forgets a client stream and its watches.
    pub fn close_stream(&self, stream: StreamId) {
        self.lock().streams.remove(&stream);
    }

    /// Number of watches on this member.
    pub fn watcher_count(&self) -> usize {
        self.lock().streams.values().map(|s| s.watchers.len()).sum()
    }

    /// Number of open watch streams.
    pub fn stream_count(&self) -> usize {
        self.lock().streams.len()
    }

    /// Creates a watch and sends its `created` response through `permit` (reserved on the
    /// stream's outbox, so it precedes every event of the watch). `requested_id` 0 = pick one.
    /// `start` 0 = from the next revision.
    pub fn create(
        &self,
        stream: StreamId,
        requested_id: i64,
        spec: WatchSpec,
        start: i64,
        permit: mpsc::Permit<'_, Result<WatchResponse, Status>>,
    ) {
        let mut inner = self.lock();
        let revision = inner.revision;
        let header = Some(self.header(revision));
        let Some(s) = inner.streams.get_mut(&stream) else {
            return;
        };
        let refuse = |why: WatchError| WatchResponse {
            header,
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: why.to_string(),
            ..Default::default()
        };
        let empty_range = !spec.range_end.is_empty()
            && spec.range_end != [0]
            && spec.key.as_slice() >= spec.range_end.as_slice();
        if empty_range {
            permit.send(Ok(refuse(WatchError::EmptyRange)));
            return;
        }
        let id = if requested_id != 0 {
            if s.watchers.contains_key(&requested_id) {
                permit.send(Ok(refuse(WatchError::DuplicateId)));
                return;
            }
            requested_id
        } else {
            while s.watchers.contains_key(&s.next_auto_id) {
                s.next_auto_id += 1;
            }
            s.next_auto_id
        };
        let position = if start <= 0 {
            Position::Synced { from: revision + 1 }
        } else if start > revision {
            Position::Synced { from: start }
        } else {
            Position::Lagging { next: start }
        };
        s.watchers.insert(id, Watcher { spec, position });
        permit.send(Ok(WatchResponse {
            header,
            watch_id: id,
            created: true,
            ..Default::default()
        }));
        drop(inner);
        if matches!(position, Position::Lagging { .. }) {
            self.lagging.notify_one();
        }
    }

    /// Cancels a watch; tells whether it existed (then the caller sends the `canceled` response).
    pub fn cancel(&self, stream: StreamId, watch_id: i64) -> bool {
        let mut inner = self.lock();
        inner
            .streams
            .get_mut(&stream)
            .is_some_and(|s| s.watchers.remove(&watch_id).is_some())
    }

    /// A client asked for a progress response: sent now if every watch of the stream is synced,
    /// otherwise as soon as they are.
    pub fn request_progress(&self, stream: StreamId) {
        let mut inner = self.lock();
        let revision = inner.revision;
        if let Some(s) = inner.streams.get_mut(&stream) {
            s.progress_requested = true;
            self.answer_progress(s, revision, Instant::now());
        }
    }

    fn answer_progress(&self, s: &mut Stream, revision: i64, now: Instant) {
        let all_synced = s
            .watchers
            .values()
            .all(|w| matches!(w.position, Position::Synced { .. }));
        if s.progress_requested && all_synced {
            let resp = WatchResponse {
                header: Some(self.header(revision)),
                watch_id: PROGRESS_WATCH_ID,
                ..Default::default()
            };
            if s.offer(vec![resp], now) {
                s.progress_requested = false;
            }
        }
    }

    /// Called after a snapshot replaced the store: makes `revision` visible and moves every
    /// synced watch to catching up from history, from the first revision it has not received (the
    /// store's history, now the snapshot's, holds what happened in between).
    pub fn restored(&self, store: &Store, revision: i64) {
        let mut inner = self.lock();
        let delivered = inner.revision;
        store.publish(revision);
        inner.revision = revision;
        for s in inner.streams.values_mut() {
            for w in s.watchers.values_mut() {
                if let Position::Synced { from } = w.position {
                    w.position = Position::Lagging {
                        next: from.max(delivered + 1),
                    };
                }
            }
        }
        drop(inner);
        self.lagging.notify_one();
    }

    /// Called by apply after committing: makes `revision` visible to readers and delivers the
    /// events of the committed requests, given as (revision, events) in order. Never blocks.
    pub fn publish(&self, store: &Store, revision: i64, changes: &[(i64, Vec<Event>)]) {
        let mut inner = self.lock();
        store.publish(revision);
        inner.revision = revision;
        if changes.is_empty() {
            return;
        }
        let now = Instant::now();
        let header = self.header(revision);
        let max = self.settings.max_response_bytes;
        let mut any_lagging = false;
        let filled;
        let changes = if inner.streams.values().any(Stream::wants_prev_kv) {
            filled = with_previous_values(store, changes);
            &filled[..]
        } else {
            changes
        };
        inner.streams.retain(|_, s| {
            if s.outbox.is_closed() {
                return false;
            }
            let Stream {
                watchers,
                outbox,
                blocked_since,
                ..
            } = s;
            for (id, w) in watchers.iter_mut() {
                let Position::Synced { from } = w.position else {
                    continue;
                };
                let events: Vec<Event> = changes
                    .iter()
                    .filter(|(rev, _)| *rev >= from)
                    .flat_map(|(_, evs)| evs.iter())
                    .filter(|e| w.spec.wants(e))
                    .map(|e| w.spec.shape(e))
                    .collect();
                if events.is_empty() {
                    continue;
                }
                let first = events
                    .first()
                    .and_then(|e| e.kv.as_ref())
                    .map_or(revision, |kv| kv.mod_revision);
                let responses = response::pack(*id, events, header, w.spec.fragment, max);
                if !offer(outbox, blocked_since, responses, now) {
                    w.position = Position::Lagging { next: first };
                    any_lagging = true;
                }
            }
            true
        });
        drop(inner);
        if any_lagging {
            self.lagging.notify_one();
        }
    }
}

/// `changes` with the previous value of every put that had one (apply does not read them:
/// see [`crate::mvcc::Changes`]), read once per event for all the watches that asked for them.
fn with_previous_values(store: &Store, changes: &[(i64, Vec<Event>)]) -> Vec<(i64, Vec<Event>)> {
    let mut filled = changes.to_vec();
    for e in filled.iter_mut().flat_map(|(_, events)| events.iter_mut()) {
        let Some(kv) = e.kv.as_ref() else { continue };
        // Version 1 is the first value of its generation: nothing before it.
        if e.r#type != EventType::Put as i32 || e.prev_kv.is_some() || kv.version <= 1 {
            continue;
        }
        match store.value_before_revision(&kv.key, kv.mod_revision) {
            Ok(prev) => e.prev_kv = prev,
            Err(err) => tracing::debug!(error = %err, "previous value for a watch unavailable"),
        }
    }
    filled
}

#[cfg(test)]
mod tests;
