//! The lessor: every lease's granted TTL, checkpointed remaining TTL and attached keys (replicated
//! state, the same on every member, changed only by apply), plus — on the leader alone — each
//! lease's expiry time.
//!
//! Contract: only the leader ("primary") decides expiry; it proposes the revoke through raft, so
//! every member deletes the same keys at the same revision. A new primary gives every lease its
//! remaining TTL plus an election timeout of grace (no mass expiry after a stall); remaining TTLs
//! are checkpointed through raft (see [`duties`]) so repeated leader changes cannot keep a lease
//! alive forever. A keep-alive acknowledged by the leader is never undone by an older checkpoint:
//! renewing a lease whose checkpoint is stored (or in flight) clears it through raft first.
//!
//! Time is `tokio::time::Instant`, so tests drive expiry with paused time.

pub mod duties;
pub mod leader;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use conclave_proto::etcdserverpb::LeaseCheckpoint;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::ServerError;
use crate::mvcc::{LeaseMove, Store};
use crate::storage::{LEASES, StorageResult};

/// etcd's largest TTL (`MaxLeaseTTL`), in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How long an expired lease's revoke may be in flight before it is proposed again.
const REVOKE_RETRY: Duration = Duration::from_secs(3);

/// The smallest TTL a lease gets: 1.5 election timeouts, rounded up to whole seconds (as etcd).
pub fn min_ttl(election_timeout: Duration) -> i64 {
    let millis = election_timeout.as_millis() as i64 * 3 / 2;
    ((millis + 999) / 1000).max(1)
}

struct Lease {
    ttl: i64,
    /// Checkpointed remaining TTL in seconds; 0 = none (the full TTL applies).
    remaining: i64,
    keys: BTreeSet<Vec<u8>>,
    /// When the lease expires; only set on the primary.
    expiry: Option<Instant>,
}

impl Lease {
    fn effective_ttl(&self) -> i64 {
        if self.remaining > 0 {
            self.remaining
        } else {
            self.ttl
        }
    }
}

#[derive(Default)]
struct Inner {
    leases: HashMap<i64, Lease>,
    /// The term this member leads in, while it is the primary.
    primary: Option<u64>,
    /// Expired leases whose revoke was proposed, and when.
    revoking: HashMap<i64, Instant>,
    /// Leases whose checkpoint proposal has not been applied yet.
    checkpointing: HashSet<i64>,
}

/// What a renewal tells the keep-alive handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed for `ttl` seconds from now.
    Renewed {
        ttl: i64,
        /// A stored checkpoint would give a new leader less than the full TTL: clear it through
        /// raft, as the leader of `term`, before acknowledging.
        clear_checkpoint: bool,
        term: u64,
    },
    /// The lease's time ran out on this primary; its revoke is (about to be) proposed. Only the
    /// revoke's application makes it "not found": this member may have been deposed meanwhile.
    Expired,
}

/// A lease as LeaseTimeToLive reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeToLive {
    pub granted_ttl: i64,
    /// Seconds left (on the primary), or the checkpointed/full TTL elsewhere.
    pub remaining: i64,
    pub keys: Vec<Vec<u8>>,
}

/// The leases of one member.
pub struct Lessor {
    inner: Mutex<Inner>,
    min_ttl: i64,
    /// Woken when a checkpoint settles, a lease is revoked, or this member starts or stops leading.
    changed: Notify,
}

fn secs_until(expiry: Instant, now: Instant) -> i64 {
    let left = expiry.saturating_duration_since(now);
    // Round up: a lease with 0.2 s left still has a second, not zero.
    left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0)
}

/// The stored leases, with the store's live keys attached.
fn load_leases(db: &Database, store: &Store) -> StorageResult<HashMap<i64, Lease>> {
    let mut leases = HashMap::new();
    let txn = db.begin_read()?;
    let table = txn.open_table(LEASES)?;
    for row in table.iter()? {
        let (id, v) = row?;
        let (ttl, remaining) = v.value();
        leases.insert(
            id.value(),
            Lease {
                ttl,
                remaining,
                keys: BTreeSet::new(),
                expiry: None,
            },
        );
    }
    for (lease, key) in store.leased_keys() {
        if let Some(l) = leases.get_mut(&lease) {
            l.keys.insert(key);
        }
    }
    Ok(leases)
}

impl Lessor {
    /// An empty lessor (a new member, or tests).
    pub fn new(min_ttl: i64) -> Lessor {
        Lessor {
            inner: Mutex::new(Inner::default()),
            min_ttl,
            changed: Notify::new(),
        }
    }

    /// Loads the leases from the database and attaches the store's live keys to them.
    pub fn open(db: &Database, store: &Store, min_ttl: i64) -> StorageResult<Lessor> {
        let lessor = Lessor::new(min_ttl);
        lessor.lock().leases = load_leases(db, store)?;
        Ok(lessor)
    }

    /// Reloads the leases after the database's lease table was replaced (a snapshot was
    /// installed; the store must be reloaded first). Expiry times are the primary's, and a member
    /// that installs a snapshot is not the leader: they are set again when it becomes one.
    pub fn reload(&self, db: &Database, store: &Store) -> StorageResult<()> {
        let leases = load_leases(db, store)?;
        let mut inner = self.lock();
        inner.leases = leases;
        inner.revoking.clear();
        inner.checkpointing.clear();
        drop(inner);
        self.changed.notify_waiters();
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Held only for map updates that cannot panic half-way.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The smallest TTL granted.
    pub fn min_ttl(&self) -> i64 {
        self.min_ttl
    }

    /// Whether `id` is a lease (keys may be attached to it).
    pub fn exists(&self, id: i64) -> bool {
        self.lock().leases.contains_key(&id)
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.lock().leases.len()
    }

    /// Whether there are no leases.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every lease id, ascending.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.lock().leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    // ---- replicated changes, made by apply inside its transaction ----

    /// Grants lease `id`; returns the TTL granted (raised to the minimum).
    pub fn grant(
        &self,
        txn: &WriteTransaction,
        id: i64,
        ttl: i64,
        now: Instant,
    ) -> StorageResult<Result<i64, ServerError>> {
        let mut inner = self.lock();
        if inner.leases.contains_key(&id) {
            return Ok(Err(ServerError::LeaseExist));
        }
        let ttl = ttl.max(self.min_ttl);
        txn.open_table(LEASES)?.insert(id, (ttl, 0))?;
        let expiry = inner
            .primary
            .is_some()
            .then(|| now + Duration::from_secs(ttl as u64));
        inner.leases.insert(
            id,
            Lease {
                ttl,
                remaining: 0,
                keys: BTreeSet::new(),
                expiry,
            },
        );
        Ok(Ok(ttl))
    }

    /// Removes lease `id`; returns its attached keys, which the caller deletes in the same
    /// revision.
    pub fn revoke(
        &self,
        txn: &WriteTransaction,
        id: i64,
    ) -> StorageResult<Result<Vec<Vec<u8>>, ServerError>> {
        let mut inner = self.lock();
        inner.revoking.remove(&id);
        let Some(lease) = inner.leases.remove(&id) else {
            return Ok(Err(ServerError::LeaseNotFound));
        };
        txn.open_table(LEASES)?.remove(id)?;
        drop(inner);
        self.changed.notify_waiters();
        Ok(Ok(lease.keys.into_iter().collect()))
    }

    /// Stores remaining TTLs (0 = the full TTL again). Unknown leases are skipped.
    pub fn checkpoint(
        &self,
        txn: &WriteTransaction,
        checkpoints: &[LeaseCheckpoint],
    ) -> StorageResult<()> {
        let mut inner = self.lock();
        let mut table = txn.open_table(LEASES)?;
        for cp in checkpoints {
            if let Some(l) = inner.leases.get_mut(&cp.id) {
                l.remaining = cp.remaining_ttl.max(0);
                table.insert(cp.id, (l.ttl, l.remaining))?;
            }
        }
        Ok(())
    }

    /// Follows the keys' lease attachments through a request's changes.
    pub fn on_lease_moves(&self, moves: &[LeaseMove]) {
        let mut inner = self.lock();
        for m in moves {
            if let Some(l) = inner.leases.get_mut(&m.from) {
                l.keys.remove(&m.key);
            }
            if let Some(l) = inner.leases.get_mut(&m.to) {
                l.keys.insert(m.key.clone());
            }
        }
    }

    // ---- the primary's view: expiry ----

    /// This member became leader in `term`: every lease expires after its remaining TTL plus
    /// `extend`.
    pub fn promote(&self, now: Instant, extend: Duration, term: u64) {
        let mut inner = self.lock();
        inner.primary = Some(term);
        inner.revoking.clear();
        for l in inner.leases.values_mut() {
            l.expiry = Some(now + Duration::from_secs(l.effective_ttl() as u64) + extend);
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// This member stopped leading: it no longer tracks expiry.
    pub fn demote(&self) {
        let mut inner = self.lock();
        inner.primary = None;
        inner.revoking.clear();
        inner.checkpointing.clear();
        for l in inner.leases.values_mut() {
            l.expiry = None;
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// The term this member leads in, while it tracks expiry.
    pub fn primary_term(&self) -> Option<u64> {
        self.lock().primary
    }

    /// Renews `id` for its full TTL from `now`. An expired lease is not renewed: its revoke is
    /// under way.
    pub fn renew(&self, id: i64, now: Instant) -> Result<Renewal, ServerError> {
        let mut inner = self.lock();
        let Some(term) = inner.primary else {
            return Err(ServerError::NotLeader);
        };
        let in_flight = inner.checkpointing.contains(&id);
        let Some(l) = inner.leases.get_mut(&id) else {
            return Err(ServerError::LeaseNotFound);
        };
        if l.expiry.is_some_and(|e| e <= now) {
            return Ok(Renewal::Expired);
        }
        l.expiry = Some(now + Duration::from_secs(l.ttl as u64));
        Ok(Renewal::Renewed {
            ttl: l.ttl,
            clear_checkpoint: l.remaining > 0 || in_flight,
            term,
        })
    }

    /// Waits until `done` holds for the lessor's state (checked again after every change), or
    /// `limit` passes; returns whether it held.
    async fn wait_until(&self, limit: Duration, done: impl Fn(&Inner) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if done(&self.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Waits until this member tracks expiry (its duties promote it right after it becomes
    /// leader), at most `limit`; returns whether it does.
    pub async fn promoted(&self, limit: Duration) -> bool {
        self.wait_until(limit, |inner| inner.primary.is_some())
            .await
    }

    /// Waits until no checkpoint of `id` is in flight (or `limit` passes).
    pub async fn checkpoint_settled(&self, id: i64, limit: Duration) {
        self.wait_until(limit, |inner| !inner.checkpointing.contains(&id))
            .await;
    }

    /// After [`Renewal::Expired`]: waits until the expired lease's revoke is applied
    /// (`LeaseNotFound`) or this member stops leading (`NotLeader`: the successor decides), at
    /// most `limit` (`Timeout`).
    pub async fn expired_outcome(&self, id: i64, limit: Duration) -> ServerError {
        let settled = self
            .wait_until(limit, |inner| {
                inner.primary.is_none() || !inner.leases.contains_key(&id)
            })
            .await;
        if !settled {
            ServerError::Timeout
        } else if self.lock().leases.contains_key(&id) {
            ServerError::NotLeader
        } else {
            ServerError::LeaseNotFound
        }
    }

    /// Remaining time of `id` (as the primary sees it when it is the primary).
    pub fn time_to_live(&self, id: i64, now: Instant, with_keys: bool) -> Option<TimeToLive> {
        let inner = self.lock();
        let l = inner.leases.get(&id)?;
        let remaining = match l.expiry {
            // Truncated, as etcd reports it.
            Some(e) => e.saturating_duration_since(now).as_secs() as i64,
            None => l.effective_ttl(),
        };
        Some(TimeToLive {
            granted_ttl: l.ttl,
            remaining,
            keys: if with_keys {
                l.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    /// Up to `max` expired leases whose revoke is not already in flight; marks them in flight.
    pub fn take_expired(&self, now: Instant, max: usize) -> Vec<i64> {
        let mut inner = self.lock();
        if inner.primary.is_none() {
            return Vec::new();
        }
        let Inner {
            leases, revoking, ..
        } = &mut *inner;
        let mut expired: Vec<(Instant, i64)> = leases
            .iter()
            .filter_map(|(id, l)| match l.expiry {
                Some(e) if e <= now => Some((e, *id)),
                _ => None,
            })
            .filter(|(_, id)| revoking.get(id).is_none_or(|at| now >= *at + REVOKE_RETRY))
            .collect();
        expired.sort_unstable();
        expired.truncate(max);
        for (_, id) in &expired {
            revoking.insert(*id, now);
        }
        expired.into_iter().map(|(_, id)| id).collect()
    }

    /// Remaining TTLs worth recording: leases whose time left fell at least `interval` below what
    /// is stored. Marks them in flight until [`Lessor::checkpoints_done`].
    pub fn take_checkpoints(
        &self,
        now: Instant,
        interval: Duration,
        max: usize,
    ) -> Vec<LeaseCheckpoint> {
        let mut inner = self.lock();
        if inner.primary.is_none() {
            return Vec::new();
        }
        let step = interval.as_secs().max(1) as i64;
        let Inner {
            leases,
            checkpointing,
            ..
        } = &mut *inner;
        let mut out = Vec::new();
        for (id, l) in leases.iter() {
            if out.len() >= max {
                break;
            }
            let Some(expiry) = l.expiry else { continue };
            let left = secs_until(expiry, now);
            if left > 0 && l.effective_ttl() - left >= step && !checkpointing.contains(id) {
                out.push(LeaseCheckpoint {
                    id: *id,
                    remaining_ttl: left,
                });
            }
        }
        for cp in &out {
            checkpointing.insert(cp.id);
        }
        out
    }

    /// Marks leases' checkpoint proposals as finished (applied or failed).
    pub fn checkpoints_done(&self, ids: impl IntoIterator<Item = i64>) {
        let mut inner = self.lock();
        for id in ids {
            inner.checkpointing.remove(&id);
        }
        drop(inner);
        self.changed.notify_waiters();
    }
}

/// Shared handle.
pub type SharedLessor = Arc<Lessor>;

#[cfg(test)]
mod tests;
