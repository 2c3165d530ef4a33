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
//! The transaction is committed with `Durability::None`: the raft log (fsynced) already holds every
//! applied entry, and the next durable commit of the raft task persists this state too (one database,
//! one commit order). The log is only truncated by a durable commit, after apply. A storage error
//! here is fatal: the member stops rather than diverge.

use std::sync::Arc;

use conclave_proto::conclave::internal::v1::{RaftCommand, raft_command::Op};
use conclave_proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutResponse,
    ResponseHeader, TxnResponse,
};
use conclave_proto::mvccpb::Event;
use prost::Message as _;
use raft::prelude::{Entry, EntryType};
use redb::{Database, Durability, WriteTransaction};
use tokio::sync::watch;

use crate::error::ServerError;
use crate::kv_ops::{self, KvError};
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::mvcc::{KeyRange, Store};
use crate::node::proposal::Waiters;
use crate::storage::{META, META_APPLIED_INDEX, StorageError, StorageResult};
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
    /// Checkpoints and member attributes: nothing to report.
    Done,
}

/// Result delivered to a waiter: the response, or why the command changed nothing.
pub type ApplyOutcome = Result<ApplyOutput, ServerError>;

/// The applier: the state machine's single writer, run by the raft task.
pub struct Applier {
    pub db: Arc<Database>,
    pub store: Arc<Store>,
    pub lessor: Arc<Lessor>,
    pub hub: Arc<WatchHub>,
    pub membership: Arc<Membership>,
    pub waiters: Arc<Waiters>,
    pub applied: watch::Sender<u64>,
    pub member_id: u64,
}

impl Applier {
    /// Applies committed `entries` (in log order; those already applied are skipped). Returns an
    /// error only when storage failed.
    pub fn apply(&self, entries: &[Entry]) -> StorageResult<()> {
        let applied = *self.applied.borrow();
        let entries: Vec<&Entry> = entries.iter().filter(|e| e.index > applied).collect();
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut results = Vec::new();
        let mut changes: Vec<(i64, Vec<Event>)> = Vec::new();
        for entry in entries {
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                // Leader no-ops; configuration changes are the raft task's business.
                continue;
            }
            let cmd = RaftCommand::decode(&entry.data[..]).map_err(|e| StorageError::Corrupt {
                table: "raft_log",
                detail: format!("entry {} is not a command: {e}", entry.index),
            })?;
            let outcome = if takes_effect(&cmd, entry.term) {
                self.apply_command(&txn, &cmd, &mut changes)?
            } else {
                Err(ServerError::NotLeader)
            };
            if cmd.origin == self.member_id {
                results.push((cmd.request_id, outcome));
            }
        }
        txn.open_table(META)?.insert(META_APPLIED_INDEX, last)?;
        txn.commit()?;
        self.hub
            .publish(&self.store, self.store.written_revision(), &changes);
        self.applied.send_replace(last);
        for (id, outcome) in results {
            self.waiters.fire(id, outcome);
        }
        Ok(())
    }

    fn apply_command(
        &self,
        txn: &WriteTransaction,
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
            _ => {}
        }
        let mut w = self.store.writer(txn).map_err(mvcc_storage)?;
        let result = match op {
            Op::Put(r) => kv_ops::put(&mut w, &self.lessor, r).map(ApplyOutput::Put),
            Op::DeleteRange(r) => kv_ops::delete_range(&mut w, r).map(ApplyOutput::DeleteRange),
            Op::Txn(r) => kv_ops::txn(&mut w, &self.lessor, r).map(ApplyOutput::Txn),
            Op::Compaction(r) => kv_ops::compaction(&mut w, r).map(ApplyOutput::Compaction),
            Op::LeaseRevoke(r) => match self.lessor.revoke(txn, r.id)? {
                Ok(keys) => revoke_keys(&mut w, &keys).map(|()| {
                    ApplyOutput::LeaseRevoke(LeaseRevokeResponse {
                        header: header(w.revision()),
                    })
                }),
                Err(e) => Err(KvError::Rejected(e)),
            },
            Op::Publish(_) | Op::LeaseGrant(_) | Op::LeaseCheckpoint(_) => Ok(ApplyOutput::Done),
        };
        let done = w.finish();
        if !done.events.is_empty() {
            self.lessor.on_events(&done.events);
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
fn revoke_keys(w: &mut crate::mvcc::Writer<'_, '_>, keys: &[Vec<u8>]) -> Result<(), KvError> {
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
