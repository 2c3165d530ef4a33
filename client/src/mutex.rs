//! A distributed mutex: etcd's lock recipe (the one behind etcd's `concurrency.Mutex` and its
//! `v3lock` service), so it interoperates with etcd clients locking the same name.
//!
//! Contract: [`Mutex::lock`] puts `<name>/<lease in hex>` attached to the lease if it is not there
//! yet (so locking twice with the same lease is not a deadlock: the second call finds the key and
//! holds the lock already), then waits until no key under `<name>/` has a lower create revision,
//! watching only its nearest predecessor (no herd effect), then checks that its own key still
//! exists: a lease that expired while waiting holds nothing (the bug Jepsen found in etcd's lock
//! in 2020) and gives [`Error::SessionExpired`]. The key's create revision is the **fencing
//! token** ([`LockHeld::fencing_token`], [`LockHeld::fence`]): a write guarded by it is refused
//! once the lock was lost. A failed or cancelled `lock` deletes its key (in the background when
//! the future is dropped), so it never blocks the waiters behind it.

use conclave_proto::etcdserverpb::ResponseHeader;
use conclave_proto::etcdserverpb::response_op::Response;

use crate::client::Client;
use crate::error::Error;
use crate::kv::{DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget};
use crate::session::Session;
use crate::txn::{Compare, CompareOp, Txn, TxnOp};
use crate::watch::{WatchMessage, WatchOptions};

/// A named lock, taken on behalf of one lease.
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
/// use conclave_client::{Mutex, PutOptions, Session, SessionOptions, Txn, TxnOp};
///
/// let session = Session::new(&client, SessionOptions::new(10)).await?;
/// let held = Mutex::new(&session, "locks/report").lock().await?;
/// // Write only while the lock is still ours: the fence compares the lock key's create revision.
/// let write = Txn::new()
///     .when([held.fence()])
///     .and_then([TxnOp::put("report/owner", "me", PutOptions::new())]);
/// if !client.kv().txn(write).await?.succeeded {
///     // The lock was lost (the session expired): someone else may hold it now.
/// }
/// held.unlock(&client).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Mutex {
    client: Client,
    prefix: Vec<u8>,
    lease: i64,
}

/// A lock held: its key and fencing token.
#[derive(Clone, Debug)]
pub struct LockHeld {
    key: Vec<u8>,
    revision: i64,
    header: Option<ResponseHeader>,
}

impl Mutex {
    /// The lock `name` for `session`'s lease (the session keeps it alive).
    pub fn new(session: &Session, name: impl Into<Vec<u8>>) -> Mutex {
        Mutex::with_lease(session.client(), name, session.lease_id())
    }

    /// The lock `name` for `lease`, kept alive by the caller.
    pub fn with_lease(client: &Client, name: impl Into<Vec<u8>>, lease: i64) -> Mutex {
        let mut prefix = name.into();
        prefix.push(b'/');
        Mutex {
            client: client.clone(),
            prefix,
            lease,
        }
    }

    /// The key this mutex holds the lock with: `<name>/<lease in hex>`.
    pub fn key(&self) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(format!("{:x}", self.lease).as_bytes());
        key
    }

    /// Waits until the lock is held. Errors: [`Error::SessionExpired`] when the lease ended while
    /// waiting, [`Error::LeaseNotFound`] when it did not exist, or the error of a request.
    pub async fn lock(&self) -> Result<LockHeld, Error> {
        if self.lease == 0 {
            // A key without a lease would never expire, and every caller would share it.
            return Err(Error::LeaseNotFound);
        }
        let key = self.key();
        let (claimed, revision, _) = claim(&self.client, &key, self.lease, b"").await?;
        // A key put here is deleted if this call ends early; one found (the same lease locking
        // again) belongs to the earlier call and is left alone.
        let guard = claimed.then(|| Release::new(&self.client, key.clone(), revision));
        wait_for_predecessors(&self.client, &self.prefix, revision).await?;
        let mine = self.client.kv().get(key.clone(), GetOptions::new()).await?;
        if mine.kvs.first().map(|kv| kv.create_revision) != Some(revision) {
            return Err(Error::SessionExpired);
        }
        if let Some(guard) = guard {
            guard.disarm();
        }
        Ok(LockHeld {
            key,
            revision,
            header: mine.header,
        })
    }
}

impl LockHeld {
    /// The lock key (`<name>/<lease in hex>`).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The lock key's create revision: it grows with every new holder, so a resource can refuse
    /// a writer whose token is older than one it has seen.
    pub fn fencing_token(&self) -> i64 {
        self.revision
    }

    /// A compare that holds only while this lock is held: put it in every Txn that must not
    /// happen after the lock was lost.
    pub fn fence(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }

    /// The header of the response that confirmed the lock.
    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }

    /// Releases the lock by deleting its key (the next waiter takes it).
    pub async fn unlock(self, client: &Client) -> Result<(), Error> {
        client.kv().delete(self.key, DeleteOptions::new()).await?;
        Ok(())
    }
}

/// Puts `key` with `value` on `lease` unless it exists: whether it was put here, its create
/// revision, and the value found when it existed. The claim is idempotent, so an ambiguous
/// outcome is simply tried again.
pub(crate) async fn claim(
    client: &Client,
    key: &[u8],
    lease: i64,
    value: &[u8],
) -> Result<(bool, i64, Vec<u8>), Error> {
    let mut attempts = 0;
    let r = loop {
        let txn = Txn::new()
            .when([Compare::create_revision(key.to_vec(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.to_vec(),
                value.to_vec(),
                PutOptions::new().with_lease(lease),
            )])
            .or_else([TxnOp::get(key.to_vec(), GetOptions::new())]);
        match client.kv().txn(txn).await {
            Err(e) if e.is_unknown_outcome() && attempts < 3 => attempts += 1,
            other => break other?,
        }
    };
    if r.succeeded {
        return Ok((true, r.header.map_or(0, |h| h.revision), value.to_vec()));
    }
    let found = match r.responses.into_iter().next().and_then(|op| op.response) {
        Some(Response::ResponseRange(range)) => range.kvs.into_iter().next(),
        _ => None,
    };
    // Gone between the compare and the get: its lease ended.
    found
        .map(|kv| (false, kv.create_revision, kv.value))
        .ok_or(Error::SessionExpired)
}

/// Waits until no key under `prefix` was created before `revision`, watching only the latest
/// such key each time (the queue of a lock or an election).
pub(crate) async fn wait_for_predecessors(
    client: &Client,
    prefix: &[u8],
    revision: i64,
) -> Result<(), Error> {
    loop {
        let before = client
            .kv()
            .get(
                prefix.to_vec(),
                GetOptions::new()
                    .with_prefix()
                    .with_max_create_revision(revision - 1)
                    .with_sort(SortOrder::Descend, SortTarget::Create)
                    .with_limit(1),
            )
            .await?;
        let Some(predecessor) = before.kvs.first() else {
            return Ok(());
        };
        let at = before.header.map_or(0, |h| h.revision);
        wait_deleted(client, &predecessor.key, at).await?;
    }
}

/// Waits until `key`, which existed at revision `at`, is deleted — or until the history it
/// would be watched from was compacted, which the caller cannot tell apart: callers re-read.
pub(crate) async fn wait_deleted(client: &Client, key: &[u8], at: i64) -> Result<(), Error> {
    let deletes = WatchOptions::new()
        .with_start_revision(at + 1)
        .with_filter_put();
    first_event(client, key, deletes).await
}

/// Waits for the first event of a watch on `key` with `options` (which filter and place it), or
/// for its history to be compacted (the caller reads again either way). Progress notifications
/// move the watch's resume point along while nothing happens, so a reconnect after a compaction
/// does not resume from a compacted revision.
pub(crate) async fn first_event(
    client: &Client,
    key: &[u8],
    options: WatchOptions,
) -> Result<(), Error> {
    let options = options.with_progress_notify();
    let mut stream = match client.watch().watch(key.to_vec(), options).await {
        Err(Error::WatchCompacted { .. }) => return Ok(()),
        other => other?,
    };
    while let Some(message) = stream.next().await {
        match message {
            Err(Error::WatchCompacted { .. }) | Ok(WatchMessage::Events { .. }) => return Ok(()),
            Err(e) => return Err(e),
            Ok(WatchMessage::Progress { .. }) => {}
        }
    }
    Err(Error::WatchCanceled {
        reason: "the watch ended".into(),
    })
}

/// Deletes a queued key (a lock's, a candidate's) when the call that put it ends without success
/// (an error, or the future dropped), so it never blocks those behind it.
pub(crate) struct Release {
    client: Client,
    key: Option<Vec<u8>>,
    revision: i64,
}

impl Release {
    /// Deletes `key` if it still has create revision `revision` (never a later holder's key).
    pub(crate) fn new(client: &Client, key: Vec<u8>, revision: i64) -> Release {
        Release {
            client: client.clone(),
            key: Some(key),
            revision,
        }
    }

    pub(crate) fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let client = self.client.clone();
        let fenced = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                self.revision,
            )])
            .and_then([TxnOp::delete(key, DeleteOptions::new())]);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = client.kv().txn(fenced).await {
                    tracing::debug!(error = %e, "could not delete an abandoned lock key");
                }
            });
        }
    }
}
