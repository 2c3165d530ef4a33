//! The single writer of the state machine, called by the raft task as soon as committed entries
//! are known (after the Ready's log append and acknowledgments: a thread of its own would only take
//! turns with the raft task on redb's single write lock, and cost a thread handover per write).
//! Committed raft entries arrive in order, in batches; each batch is applied in ONE redb write transaction together with the applied index, so after a crash
//! re-applying from the stored index is exact. Only after the commit are results published: the MVCC
//! revision becomes visible to readers, the applied index advances, and this member's waiters fire.
//!
//! A command the leader made on its own authority carries the term it led in (`leader_term`) and
//! is applied only if its entry belongs to that term: a deposed leader may have decided it on stale
//! clocks (a lease "expired" while it was paused), and its successor must not execute it.
//!
//! Membership changes (raft conf change entries) are checked against the member table again at
//! apply (the table may have changed since the API checked), handed to raft-rs, and recorded —
//! table and resulting conf state — in the same transaction. Installing a snapshot
//! ([`Applier::restore`]) replaces the whole state in one durable transaction and reloads every
//! in-memory view of it.
//!
//! The transaction is committed with `Durability::None`: the raft log (fsynced) already holds every
//! applied entry, and the next durable commit of the raft task persists this state too (one database,
//! one commit order). The log is only truncated by a durable commit, after apply. A storage error
//! here is fatal: the member stops rather than diverge.

use std::sync::Arc;

use std::path::Path;

use conclave_proto::conclave::internal::v1::{
    ConfChangeContext, MemberRecord, RaftCommand, raft_command::Op,
};
use conclave_proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutResponse,
    ResponseHeader, TxnResponse,
};
use conclave_proto::mvccpb::Event;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfState, Entry, EntryType, SnapshotMetadata};
use redb::{Durability, WriteTransaction};
use tokio::sync::watch;

use crate::alarm::Alarms;
use crate::error::ServerError;
use crate::kv_ops::{self, KvError};
use crate::lease::Lessor;
use crate::membership::{self, Change, Membership};
use crate::mvcc::{KeyRange, Store, Writer};
use crate::node::proposal::Waiters;
use crate::storage::raft_log::RaftLog;
use crate::storage::{Db, META, META_APPLIED_INDEX, StorageError, StorageResult, snapshot};
use crate::watch::WatchHub;

/// What an applied command produced, for the member that proposed it.
#[derive(Debug, Clone)]
pub enum ApplyOutput {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    /// A membership change: the member table after it.
    Members(Vec<MemberRecord>),
    /// An alarm raised or cleared: the alarms after it.
    Alarms(Vec<conclave_proto::etcdserverpb::AlarmMember>),
    /// Checkpoints and member attributes: nothing to report.
    Done,
}

/// Result delivered to a waiter: the response, or why the command changed nothing.
pub type ApplyOutcome = Result<ApplyOutput, ServerError>;

/// Hands a committed conf change to raft-rs and returns the configuration it produced.
pub type ConfApplier<'a> = dyn FnMut(&ConfChange) -> Result<ConfState, raft::Error> + 'a;

/// The applier: the state machine's single writer, run by the raft task.
pub struct Applier {
    pub db: Db,
    pub store: Arc<Store>,
    pub lessor: Arc<Lessor>,
    pub hub: Arc<WatchHub>,
    pub membership: Arc<Membership>,
    pub alarms: Arc<Alarms>,
    pub log: RaftLog,
    pub waiters: Arc<Waiters>,
    pub applied: watch::Sender<u64>,
    pub member_id: u64,
}

impl Applier {
    /// Applies committed `entries` (in log order; those already applied are skipped), handing
    /// conf changes to `conf`. Returns whether the member table changed; an error only when
    /// storage (or raft-rs, refusing a conf change) failed.
    pub fn apply(&self, entries: &[Entry], conf: &mut ConfApplier<'_>) -> StorageResult<bool> {
        let applied = *self.applied.borrow();
        let entries: Vec<&Entry> = entries.iter().filter(|e| e.index > applied).collect();
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(false);
        };
        let started = std::time::Instant::now();
        let count = entries.len() as u64;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut results = Vec::new();
        let mut changes: Vec<(i64, Vec<Event>)> = Vec::new();
        let mut members_changed = false;
        // Opened at the batch's first key-value command and kept for the rest of the batch.
        let mut writer = None;
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal if !entry.data.is_empty() => {}
                EntryType::EntryConfChange => {
                    let (origin, request_id, outcome) =
                        self.apply_conf_change(&txn, entry, conf)?;
                    members_changed |= outcome.is_ok();
                    if origin == self.member_id {
                        results.push((request_id, outcome));
                    }
                    continue;
                }
                // Leader no-ops; this member never proposes joint (V2) changes.
                _ => continue,
            }
            let cmd = RaftCommand::decode(&entry.data[..]).map_err(|e| StorageError::Corrupt {
                table: "raft_log",
                detail: format!("entry {} is not a command: {e}", entry.index),
            })?;
            let outcome = if takes_effect(&cmd, entry.term) {
                self.apply_command(&txn, &mut writer, &cmd, &mut changes)?
            } else {
                Err(ServerError::NotLeader)
            };
            members_changed |= matches!(&outcome, Ok(ApplyOutput::Members(_)));
            if cmd.origin == self.member_id {
                results.push((cmd.request_id, outcome));
            }
        }
        drop(writer);
        txn.open_table(META)?.insert(META_APPLIED_INDEX, last)?;
        txn.commit()?;
        let m = crate::metrics::get();
        m.apply_duration.observe(started.elapsed());
        m.proposals_applied
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        self.hub
            .publish(&self.store, self.store.written_revision(), &changes);
        self.applied.send_replace(last);
        for (id, outcome) in results {
            self.waiters.fire(id, outcome);
        }
        Ok(members_changed)
    }

    /// Applies one conf change entry: checks it against the member table, lets raft-rs change its
    /// configuration, and records both. An invalid change changes nothing (raft-rs is not told).
    fn apply_conf_change(
        &self,
        txn: &WriteTransaction,
        entry: &Entry,
        conf: &mut ConfApplier<'_>,
    ) -> StorageResult<(u64, u64, ApplyOutcome)> {
        let cc = ConfChange::parse_from_bytes(&entry.data).map_err(|e| StorageError::Corrupt {
            table: "raft_log",
            detail: format!("entry {} is not a conf change: {e}", entry.index),
        })?;
        let ctx =
            ConfChangeContext::decode(&cc.context[..]).map_err(|e| StorageError::Corrupt {
                table: "raft_log",
                detail: format!("conf change {} has a bad context: {e}", entry.index),
            })?;
        let change = membership::change_of(&cc, ctx.member, &self.membership);
        if let Err(e) = self.membership.check(&change) {
            tracing::warn!(index = entry.index, error = %e, ?change, "membership change refused at apply");
            return Ok((ctx.origin, ctx.request_id, Err(e)));
        }
        let cs = conf(&cc).map_err(|e| StorageError::Corrupt {
            table: "raft_log",
            detail: format!("raft refused conf change {}: {e}", entry.index),
        })?;
        self.membership.apply_change(txn, &change)?;
        self.log.stage_conf_state(txn, &cs)?;
        tracing::info!(index = entry.index, ?change, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
        Ok((
            ctx.origin,
            ctx.request_id,
            Ok(ApplyOutput::Members(self.membership.list())),
        ))
    }

    /// Installs the snapshot `meta` received into the file at `path`: replaces the whole state in
    /// one durable transaction, then reloads the store's index, the leases and the member table,
    /// moves watches to catching up from the new history, and advances the applied index.
    pub fn restore(&self, meta: &SnapshotMetadata, path: &Path) -> StorageResult<()> {
        let started = std::time::Instant::now();
        self.log
            .install_snapshot(meta, |txn| snapshot::load_rows(txn, path))?;
        self.store.reload().map_err(mvcc_storage)?;
        let db = self.db.get();
        self.lessor.reload(&db, &self.store)?;
        self.membership.reload(&db)?;
        self.alarms.reload(&db)?;
        self.hub.restored(&self.store, self.store.revision());
        self.applied.send_replace(meta.index);
        crate::metrics::inc(&crate::metrics::get().snapshots_installed);
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an installed snapshot file");
        }
        tracing::info!(
            index = meta.index,
            term = meta.term,
            revision = self.store.revision(),
            keys = self.store.key_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "installed snapshot"
        );
        Ok(())
    }

    fn apply_command<'s, 't>(
        &'s self,
        txn: &'t WriteTransaction,
        writer: &mut Option<Writer<'s, 't>>,
        cmd: &RaftCommand,
        changes: &mut Vec<(i64, Vec<Event>)>,
    ) -> StorageResult<ApplyOutcome> {
        let Some(op) = &cmd.op else {
            return Ok(Err(ServerError::NotCapable));
        };
        match op {
            Op::Publish(p) => {
                self.membership.apply_publish(txn, p)?;
                return Ok(Ok(ApplyOutput::Done));
            }
            Op::LeaseGrant(r) => {
                let now = tokio::time::Instant::now();
                return Ok(self.lessor.grant(txn, r.id, r.ttl, now)?.map(|ttl| {
                    ApplyOutput::LeaseGrant(LeaseGrantResponse {
                        header: header(self.store.written_revision()),
                        id: r.id,
                        ttl,
                        error: String::new(),
                    })
                }));
            }
            Op::LeaseCheckpoint(r) => {
                self.lessor.checkpoint(txn, &r.checkpoints)?;
                return Ok(Ok(ApplyOutput::Done));
            }
            Op::Alarm(r) => {
                return Ok(Ok(ApplyOutput::Alarms(self.alarms.apply(txn, r)?)));
            }
            Op::MemberUpdate(m) => {
                let change = Change::Update {
                    id: m.id,
                    peer_urls: m.peer_urls.clone(),
                };
                if let Err(e) = self.membership.check(&change) {
                    return Ok(Err(e));
                }
                self.membership.apply_change(txn, &change)?;
                return Ok(Ok(ApplyOutput::Members(self.membership.list())));
            }
            _ => {}
        }
        let w = match writer {
            Some(w) => w,
            None => writer.insert(self.store.writer(txn).map_err(mvcc_storage)?),
        };
        let result = match op {
            Op::Put(r) => kv_ops::put(w, &self.lessor, r).map(ApplyOutput::Put),
            Op::DeleteRange(r) => kv_ops::delete_range(w, r).map(ApplyOutput::DeleteRange),
            Op::Txn(r) => kv_ops::txn(w, &self.lessor, r).map(ApplyOutput::Txn),
            Op::Compaction(r) => kv_ops::compaction(w, r).map(ApplyOutput::Compaction),
            Op::LeaseRevoke(r) => match self.lessor.revoke(txn, r.id)? {
                Ok(keys) => revoke_keys(w, &keys).map(|()| {
                    ApplyOutput::LeaseRevoke(LeaseRevokeResponse {
                        header: header(w.revision()),
                    })
                }),
                Err(e) => Err(KvError::Rejected(e)),
            },
            Op::Publish(_)
            | Op::LeaseGrant(_)
            | Op::LeaseCheckpoint(_)
            | Op::MemberUpdate(_)
            | Op::Alarm(_) => Ok(ApplyOutput::Done),
        };
        let done = w.finish();
        if !done.lease_moves.is_empty() {
            self.lessor.on_lease_moves(&done.lease_moves);
        }
        if !done.events.is_empty() {
            changes.push((done.revision, done.events));
        }
        match result {
            Ok(out) => Ok(Ok(out)),
            Err(KvError::Rejected(e)) => Ok(Err(e)),
            Err(KvError::Storage(e)) => Err(e),
        }
    }
}

/// Whether a command in an entry of `entry_term` is applied: a command the leader made on its own
/// authority only in the term it led in (a deposed leader's command, appended by its successor,
/// is void).
fn takes_effect(cmd: &RaftCommand, entry_term: u64) -> bool {
    cmd.leader_term == 0 || cmd.leader_term == entry_term
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Deletes a revoked lease's keys, all in one revision.
fn revoke_keys(w: &mut Writer<'_, '_>, keys: &[Vec<u8>]) -> Result<(), KvError> {
    for key in keys {
        w.delete_range(KeyRange::new(key, b""))?;
    }
    Ok(())
}

fn mvcc_storage(e: crate::mvcc::MvccError) -> StorageError {
    match e {
        crate::mvcc::MvccError::Storage(s) => s,
        other => StorageError::Corrupt {
            table: "mvcc",
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaders_own_command_takes_effect_only_in_its_term() {
        let client = RaftCommand::default();
        assert!(takes_effect(&client, 1) && takes_effect(&client, 9));
        let own = RaftCommand {
            leader_term: 4,
            ..Default::default()
        };
        assert!(takes_effect(&own, 4));
        assert!(!takes_effect(&own, 5), "appended by a successor");
        assert!(!takes_effect(&own, 3));
    }
}
