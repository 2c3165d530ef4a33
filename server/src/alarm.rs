//! Alarms (NOSPACE, CORRUPT), replicated like etcd's: raising or clearing one is a raft command,
//! applied into the `alarms` table, so every member refuses the same writes.
//!
//! The space quota (`--quota-backend-bytes`) is measured on the stored key-value history
//! (`Store::stored_bytes`: what compaction frees), which is the same on every member at the same
//! revision, unlike a database file that only grows. A write that would go over the quota is
//! refused and raises NOSPACE; while NOSPACE is raised, writes that add data (puts, transactions
//! with puts, lease grants) are refused with etcd's "database space exceeded", and deletes,
//! compactions and revokes still work. Unlike etcd, the leader clears NOSPACE by itself once the
//! history is back under 90% of the quota (`auto_clear`; the margin keeps the alarm from clearing
//! right after it was raised, when the history is just under the quota); `alarm disarm` still
//! works.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use conclave_proto::conclave::internal::v1::raft_command::Op;
use conclave_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, alarm_request::AlarmAction,
};
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::watch;

use crate::error::ServerError;
use crate::mvcc::Store;
use crate::node::Node;
use crate::storage::{ALARMS, StorageResult};

/// How often the leader checks whether NOSPACE can be cleared.
const CLEAR_CHECK: Duration = Duration::from_secs(1);
/// NOSPACE clears once the history is at most this percentage of the quota.
const CLEAR_AT_PERCENT: u64 = 90;

/// Whether NOSPACE may be cleared with `stored` bytes of history under `quota`. Raising happens
/// when a write would go over the quota, so the history is then just under it: clearing must wait
/// for real room, or the alarm would clear at once and let small writes in.
fn room_to_clear(stored: u64, quota: u64) -> bool {
    stored <= quota / 100 * CLEAR_AT_PERCENT
}

/// The raised alarms: (member id, alarm type).
#[derive(Default)]
pub struct Alarms {
    raised: RwLock<BTreeSet<(u64, i32)>>,
}

impl Alarms {
    /// The alarms stored in `db`.
    pub fn open(db: &Database) -> StorageResult<Alarms> {
        let alarms = Alarms::default();
        alarms.reload(db)?;
        Ok(alarms)
    }

    /// Reloads after a snapshot replaced the table.
    pub fn reload(&self, db: &Database) -> StorageResult<()> {
        let txn = db.begin_read()?;
        let mut raised = BTreeSet::new();
        for row in txn.open_table(ALARMS)?.iter()? {
            let (k, _) = row?;
            raised.insert(k.value());
        }
        *self.raised.write().unwrap_or_else(|p| p.into_inner()) = raised;
        Ok(())
    }

    /// Every raised alarm.
    pub fn list(&self) -> Vec<AlarmMember> {
        self.raised
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(member, alarm)| AlarmMember {
                member_id: *member,
                alarm: *alarm,
            })
            .collect()
    }

    /// Whether an alarm of `kind` is raised on any member.
    pub fn has(&self, kind: AlarmType) -> bool {
        self.raised
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(_, a)| *a == kind as i32)
    }

    /// Applies an ACTIVATE or DEACTIVATE inside apply's transaction; returns the alarms after it.
    /// Deactivating with member 0 or alarm NONE matches every member or every kind.
    pub fn apply(
        &self,
        txn: &WriteTransaction,
        req: &AlarmRequest,
    ) -> StorageResult<Vec<AlarmMember>> {
        let mut table = txn.open_table(ALARMS)?;
        {
            let mut raised = self.raised.write().unwrap_or_else(|p| p.into_inner());
            if req.action == AlarmAction::Activate as i32 && req.alarm != AlarmType::None as i32 {
                table.insert((req.member_id, req.alarm), ())?;
                raised.insert((req.member_id, req.alarm));
            } else if req.action == AlarmAction::Deactivate as i32 {
                let matching: Vec<(u64, i32)> = raised
                    .iter()
                    .filter(|(m, a)| {
                        (req.member_id == 0 || *m == req.member_id)
                            && (req.alarm == AlarmType::None as i32 || *a == req.alarm)
                    })
                    .copied()
                    .collect();
                for key in matching {
                    table.remove(key)?;
                    raised.remove(&key);
                }
            }
        }
        Ok(self.list())
    }
}

/// The space quota and the size limit of the command that raises NOSPACE.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub bytes: u64,
    pub max_request_bytes: usize,
}

/// Admits a write that adds `incoming` bytes, or refuses it with `NoSpace`: while NOSPACE is
/// raised, or when it would take the history over the quota (then it raises NOSPACE through raft
/// first, as etcd does).
pub async fn admit(
    node: &Node,
    store: &Store,
    alarms: &Alarms,
    quota: Quota,
    incoming: usize,
) -> Result<(), ServerError> {
    if alarms.has(AlarmType::Nospace) {
        return Err(ServerError::NoSpace);
    }
    if store.stored_bytes() + incoming as u64 <= quota.bytes {
        return Ok(());
    }
    tracing::warn!(
        stored_bytes = store.stored_bytes(),
        quota = quota.bytes,
        "space quota exceeded: raising NOSPACE"
    );
    let raise = Op::Alarm(AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: node.member_id,
        alarm: AlarmType::Nospace as i32,
    });
    if let Err(e) = node.propose(raise, quota.max_request_bytes).await {
        tracing::warn!(error = %e, "could not raise NOSPACE");
    }
    Err(ServerError::NoSpace)
}

/// On the leader: clears NOSPACE once the history is back under 90% of the quota. Runs until
/// `stop`.
pub async fn auto_clear(
    node: Arc<Node>,
    alarms: Arc<Alarms>,
    store: Arc<Store>,
    quota: u64,
    max_request_bytes: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(CLEAR_CHECK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !node.status().is_leader || !alarms.has(AlarmType::Nospace) {
            continue;
        }
        if !room_to_clear(store.stored_bytes(), quota) {
            continue;
        }
        let clear = AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: 0,
            alarm: AlarmType::Nospace as i32,
        };
        match node.propose(Op::Alarm(clear), max_request_bytes).await {
            Ok(_) => tracing::info!(
                stored_bytes = store.stored_bytes(),
                quota,
                "history back under the quota: NOSPACE cleared"
            ),
            Err(e) => tracing::debug!(error = %e, "clearing NOSPACE failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    #[test]
    fn nospace_clears_only_with_room_below_the_quota() {
        let quota = 64 * 1024;
        assert!(
            !room_to_clear(quota - 1, quota),
            "just under: raised at this point"
        );
        assert!(!room_to_clear(quota, quota));
        assert!(room_to_clear(quota * 9 / 10 - 100, quota));
        assert!(room_to_clear(0, quota));
    }

    #[test]
    fn raise_clear_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open(dir.path()).unwrap();
        let alarms = Alarms::open(&db.get()).unwrap();
        let txn = db.begin_write().unwrap();
        alarms
            .apply(&txn, &req(AlarmAction::Activate, 1, AlarmType::Nospace))
            .unwrap();
        alarms
            .apply(&txn, &req(AlarmAction::Activate, 2, AlarmType::Nospace))
            .unwrap();
        alarms
            .apply(&txn, &req(AlarmAction::Activate, 2, AlarmType::Corrupt))
            .unwrap();
        txn.commit().unwrap();
        assert!(alarms.has(AlarmType::Nospace) && alarms.has(AlarmType::Corrupt));
        assert_eq!(Alarms::open(&db.get()).unwrap().list().len(), 3, "stored");

        // Member 0 = every member; only NOSPACE goes.
        let txn = db.begin_write().unwrap();
        let left = alarms
            .apply(&txn, &req(AlarmAction::Deactivate, 0, AlarmType::Nospace))
            .unwrap();
        txn.commit().unwrap();
        assert_eq!(left.len(), 1);
        assert!(!alarms.has(AlarmType::Nospace));
        // NONE = every kind.
        let txn = db.begin_write().unwrap();
        alarms
            .apply(&txn, &req(AlarmAction::Deactivate, 2, AlarmType::None))
            .unwrap();
        txn.commit().unwrap();
        assert!(Alarms::open(&db.get()).unwrap().list().is_empty());
    }
}
