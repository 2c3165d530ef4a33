//! The informer: a local copy of every key under a prefix, kept consistent with the cluster by
//! list + watch, for orchestrators and configuration caches.
//!
//! Contract: [`Informer::start`] reads the prefix with one linearizable Range at revision R, then
//! watches it from R + 1 with a resumable [`WatchStream`], so the local map only ever moves from the
//! prefix's state at one revision to its state at a later one, and never shows a state the store
//! did not have. Reconnects are the stream's business (no gap, no duplicate). When the watch cannot
//! resume because its revision was compacted ([`Error::WatchCompacted`]), the informer lists the
//! prefix again at the current revision, replaces the map and emits [`InformerEvent::Resync`]; any
//! other end of the watch is retried from the map's revision + 1 (re-listing if that is compacted
//! too), forever, with backoff. The informer's revision is the one the map is known complete
//! through: the last applied event's revision, a progress notification's, or a listing's. After
//! [`Informer::wait_for_revision`]`(r)` returns, the snapshot reflects every change up to r.
//! Events are published to subscribers under the same lock that updates the map, so a snapshot
//! taken with [`Informer::subscribe_with_snapshot`] is followed by exactly the events after it.
//! Dropping the informer stops its task and cancels the watch.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use conclave_proto::mvccpb::event::EventType;
use conclave_proto::mvccpb::{Event, KeyValue};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::client::Client;
use crate::error::Error;
use crate::kv::GetOptions;
use crate::watch::{WatchMessage, WatchOptions, WatchStream};

/// Events a subscriber may fall behind by before it misses some (and is told so).
const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// How long [`Informer::wait_for_revision`] waits for the revision to move before it asks the
/// server for a progress notification again.
const PROGRESS_RETRY: Duration = Duration::from_millis(500);

/// The local copy of the prefix: its keys, by key, as of `revision`.
type Map = BTreeMap<Vec<u8>, KeyValue>;

/// Options of an [`Informer`].
///
/// Default: subscribers may lag 1024 events behind.
#[derive(Clone, Debug)]
pub struct InformerOptions {
    event_capacity: usize,
}

impl Default for InformerOptions {
    fn default() -> Self {
        InformerOptions {
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }
}

impl InformerOptions {
    /// The defaults (see the type's documentation).
    pub fn new() -> Self {
        Self::default()
    }

    /// How many events (at least 1) a subscriber may fall behind by. A subscriber that falls
    /// further behind gets [`broadcast::error::RecvError::Lagged`] and should re-read the
    /// snapshot.
    pub fn with_event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }
}

/// A change of the informer's map, as seen by subscribers.
#[derive(Clone, Debug, PartialEq)]
pub enum InformerEvent {
    /// A key under the prefix was created or updated (at `kv.mod_revision`).
    Put {
        /// The key-value pair as written.
        kv: KeyValue,
        /// The pair it replaced in the map (`None` when the key was created).
        prev: Option<KeyValue>,
    },
    /// A key under the prefix was deleted.
    Delete {
        /// The deleted key.
        key: Vec<u8>,
        /// The revision of the delete.
        revision: i64,
        /// The pair it removed from the map.
        prev: Option<KeyValue>,
    },
    /// The watch could not resume (its revision was compacted), so the prefix was listed again
    /// at `revision` and the map replaced: the changes in between were not seen one by one.
    /// Re-read the snapshot.
    Resync {
        /// The revision of the new listing.
        revision: i64,
    },
}

/// The map and the revision it is complete through.
struct State {
    revision: i64,
    kvs: Map,
}

/// What the informer and its task share.
struct Shared {
    state: RwLock<State>,
    events: broadcast::Sender<InformerEvent>,
}

impl Shared {
    /// The state, for reading. Nothing panics while holding the lock, so a poisoned lock still
    /// holds a consistent state.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, for writing.
    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A local, consistent copy of every key under a prefix, kept up to date in the background.
///
/// # Example
///
/// ```no_run
/// # async fn example() -> Result<(), conclave_client::Error> {
/// # let client = conclave_client::Client::connect(
/// #     ["127.0.0.1:2379"],
/// #     conclave_client::ConnectOptions::new(),
/// # )
/// # .await?;
/// use conclave_client::{Informer, InformerEvent, InformerOptions};
///
/// let informer = Informer::start(&client, "config/", InformerOptions::new()).await?;
/// let (revision, config, mut events) = informer.subscribe_with_snapshot();
/// println!("{} keys at revision {revision}", config.len());
/// while let Ok(event) = events.recv().await {
///     match event {
///         InformerEvent::Put { kv, prev } => {
///             let what = if prev.is_some() { "changed" } else { "added" };
///             println!("{} {what}", String::from_utf8_lossy(&kv.key));
///         }
///         InformerEvent::Delete { key, .. } => {
///             println!("{} removed", String::from_utf8_lossy(&key));
///         }
///         InformerEvent::Resync { revision } => {
///             let (_, config) = informer.snapshot();
///             println!("re-listed at {revision}: {} keys", config.len());
///         }
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct Informer {
    prefix: Vec<u8>,
    shared: Arc<Shared>,
    revision: watch::Receiver<i64>,
    progress: mpsc::Sender<()>,
    task: JoinHandle<()>,
}

impl fmt::Debug for Informer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.read();
        f.debug_struct("Informer")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("revision", &state.revision)
            .field("keys", &state.kvs.len())
            .finish()
    }
}

impl Informer {
    /// Lists every key under `prefix` (all keys when it is empty) with one linearizable Range,
    /// starts watching the prefix from the revision after the listing, and returns once the watch
    /// is confirmed. Both steps fail over like reads; their error is returned if they cannot
    /// complete within the client's request timeout. From then on a background task keeps the map
    /// current and never gives up (see the module documentation).
    pub async fn start(
        client: &Client,
        prefix: impl Into<Vec<u8>>,
        options: InformerOptions,
    ) -> Result<Informer, Error> {
        let prefix = prefix.into();
        let (revision, kvs, stream) = list_and_watch(client, &prefix).await?;
        let (events, _) = broadcast::channel(options.event_capacity.max(1));
        let shared = Arc::new(Shared {
            state: RwLock::new(State { revision, kvs }),
            events,
        });
        let (revision_sender, revision_receiver) = watch::channel(revision);
        let (progress, progress_requests) = mpsc::channel(1);
        let follower = Follower {
            client: client.clone(),
            prefix: prefix.clone(),
            shared: shared.clone(),
            revision: revision_sender,
            progress: progress_requests,
        };
        let task = tokio::spawn(run(follower, stream));
        Ok(Informer {
            prefix,
            shared,
            revision: revision_receiver,
            progress,
            task,
        })
    }

    /// The prefix this informer mirrors.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The revision the map is complete through: every change under the prefix up to it is
    /// reflected, and none after it.
    pub fn revision(&self) -> i64 {
        self.shared.read().revision
    }

    /// A copy of the map and the revision it reflects.
    pub fn snapshot(&self) -> (i64, BTreeMap<Vec<u8>, KeyValue>) {
        let state = self.shared.read();
        (state.revision, state.kvs.clone())
    }

    /// The current pair of `key`, if it is in the map.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.shared.read().kvs.get(key).cloned()
    }

    /// A receiver of every event published from now on. A receiver that falls more than the
    /// configured capacity behind gets [`broadcast::error::RecvError::Lagged`] and should re-read
    /// the snapshot.
    pub fn subscribe(&self) -> broadcast::Receiver<InformerEvent> {
        self.shared.events.subscribe()
    }

    /// A snapshot and a receiver taken atomically: the receiver gets exactly the events that
    /// follow the snapshot, none already reflected in it and none missing.
    pub fn subscribe_with_snapshot(
        &self,
    ) -> (
        i64,
        BTreeMap<Vec<u8>, KeyValue>,
        broadcast::Receiver<InformerEvent>,
    ) {
        let state = self.shared.read();
        let events = self.shared.events.subscribe();
        (state.revision, state.kvs.clone(), events)
    }

    /// Waits until the map is complete through at least `revision`, and returns the revision
    /// reached. Once it returns, [`Informer::snapshot`] reflects every change up to `revision`.
    ///
    /// When nothing under the prefix changes, the revision moves only by progress notifications,
    /// which this asks the server for (again every half second while waiting). It waits as long as
    /// it takes, so bound it with `tokio::time::timeout` when `revision` may not exist yet. Fails
    /// only if the background task has stopped (it panicked).
    pub async fn wait_for_revision(&self, revision: i64) -> Result<i64, Error> {
        let mut reached = self.revision.clone();
        let mut ask = true;
        loop {
            let current = *reached.borrow_and_update();
            if current >= revision {
                return Ok(current);
            }
            if ask {
                // A full queue means a request is already pending: that one will do.
                let _ = self.progress.try_send(());
            }
            match tokio::time::timeout(PROGRESS_RETRY, reached.changed()).await {
                Ok(Ok(())) => ask = false,
                Err(_elapsed) => ask = true,
                Ok(Err(_closed)) => {
                    return Err(Error::Status(Status::cancelled(
                        "the informer's background task has stopped",
                    )));
                }
            }
        }
    }
}

impl Drop for Informer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The watch options of the informer, resuming after `revision`.
fn watch_options(revision: i64) -> WatchOptions {
    WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1)
        .with_progress_notify()
}

/// Lists the prefix with one linearizable Range: its revision and its keys.
async fn list(client: &Client, prefix: &[u8]) -> Result<(i64, Map), Error> {
    let response = client
        .kv()
        .get(prefix.to_vec(), GetOptions::new().with_prefix())
        .await?;
    let Some(header) = response.header else {
        return Err(Error::Status(Status::internal(
            "Range response without a header (no revision)",
        )));
    };
    let kvs = response
        .kvs
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect();
    Ok((header.revision, kvs))
}

/// Lists the prefix and starts watching it right after the listing's revision, listing again if
/// that revision was compacted in between.
async fn list_and_watch(client: &Client, prefix: &[u8]) -> Result<(i64, Map, WatchStream), Error> {
    loop {
        let (revision, kvs) = list(client, prefix).await?;
        match client
            .watch()
            .watch(prefix.to_vec(), watch_options(revision))
            .await
        {
            Ok(stream) => return Ok((revision, kvs, stream)),
            // Compacted right after the listing: each new listing is at a newer revision.
            Err(Error::WatchCompacted { .. }) => {
                tracing::debug!(
                    revision,
                    "informer listing compacted before the watch started"
                );
            }
            Err(err) => return Err(err),
        }
    }
}

/// The background task's state.
struct Follower {
    client: Client,
    prefix: Vec<u8>,
    shared: Arc<Shared>,
    /// Published after every update of the map, for `wait_for_revision`.
    revision: watch::Sender<i64>,
    /// Progress requests from `wait_for_revision`.
    progress: mpsc::Receiver<()>,
}

/// The background task: follows the watch, and recovers (re-watching or re-listing) whenever it
/// ends. Runs until aborted.
async fn run(mut follower: Follower, mut stream: WatchStream) {
    loop {
        let ended = follower.follow(&mut stream).await;
        stream = follower.recover(ended).await;
    }
}

impl Follower {
    /// Applies the watch's messages until it ends; returns why it ended.
    async fn follow(&mut self, stream: &mut WatchStream) -> Error {
        loop {
            tokio::select! {
                Some(()) = self.progress.recv() => {
                    stream.request_progress();
                }
                message = stream.next() => match message {
                    Some(Ok(WatchMessage::Events { events, .. })) => self.apply(events),
                    Some(Ok(WatchMessage::Progress { revision })) => self.advance(revision),
                    Some(Err(err)) => return err,
                    None => {
                        return Error::WatchCanceled {
                            reason: "the watch stream ended".to_owned(),
                        };
                    }
                },
            }
        }
    }

    /// Applies the events of whole revisions to the map, publishes them, then the new revision.
    fn apply(&self, events: Vec<Event>) {
        let mut state = self.shared.write();
        let base = state.revision;
        let mut reached = base;
        for event in events {
            let Some(kv) = event.kv else {
                continue;
            };
            let revision = kv.mod_revision;
            // Already in the map (the stream never repeats events; this only guards the map).
            if revision <= base {
                continue;
            }
            let change = if event.r#type == EventType::Delete as i32 {
                let prev = state.kvs.remove(&kv.key);
                InformerEvent::Delete {
                    key: kv.key,
                    revision,
                    prev,
                }
            } else {
                let prev = state.kvs.insert(kv.key.clone(), kv.clone());
                InformerEvent::Put { kv, prev }
            };
            reached = reached.max(revision);
            // No subscriber is not an error.
            let _ = self.shared.events.send(change);
        }
        state.revision = reached;
        drop(state);
        self.revision.send_replace(reached);
    }

    /// A progress notification: the map is complete through `revision`.
    fn advance(&self, revision: i64) {
        let mut state = self.shared.write();
        if revision <= state.revision {
            return;
        }
        state.revision = revision;
        drop(state);
        self.revision.send_replace(revision);
    }

    /// Replaces the map with a new listing and tells subscribers.
    fn replace(&self, revision: i64, kvs: Map) {
        let mut state = self.shared.write();
        state.revision = revision;
        state.kvs = kvs;
        let _ = self.shared.events.send(InformerEvent::Resync { revision });
        drop(state);
        self.revision.send_replace(revision);
    }

    /// Gets a new watch after the last one ended with `ended`: from the map's revision + 1, or,
    /// when that is compacted, after a new listing. Retries with backoff until it succeeds.
    async fn recover(&self, ended: Error) -> WatchStream {
        let mut relist = matches!(ended, Error::WatchCompacted { .. });
        tracing::debug!(error = %ended, relist, "informer watch ended");
        let mut attempt: u32 = 0;
        loop {
            if relist {
                match list(&self.client, &self.prefix).await {
                    Ok((revision, kvs)) => {
                        tracing::debug!(revision, "informer re-listed its prefix");
                        self.replace(revision, kvs);
                        relist = false;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "informer re-list failed; retrying");
                    }
                }
            }
            if !relist {
                let revision = self.shared.read().revision;
                match self
                    .client
                    .watch()
                    .watch(self.prefix.clone(), watch_options(revision))
                    .await
                {
                    Ok(stream) => return stream,
                    Err(Error::WatchCompacted { compact_revision }) => {
                        tracing::debug!(revision, compact_revision, "informer must re-list");
                        relist = true;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, revision, "informer re-watch failed; retrying");
                    }
                }
            }
            tokio::time::sleep(self.client.options().backoff(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }
}
