//! The periodic corruption check (`--experimental-corrupt-check-time`, etcd's flag): the leader
//! compares the HashKV of every member at one revision and raises the CORRUPT alarm for the
//! members whose history differs from the majority's. While CORRUPT is raised, the cluster
//! refuses writes ("etcdserver: corrupt cluster", as etcd): a diverged replica must be looked at
//! (and replaced) before more data is written.
//!
//! A member that has not applied the revision yet, or has compacted differently, or cannot be
//! reached, is skipped this round: only hashes of the same history are compared.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use conclave_proto::conclave::internal::v1::raft_command::Op;
use conclave_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use conclave_proto::etcdserverpb::{
    AlarmRequest, AlarmType, HashKvRequest, alarm_request::AlarmAction,
};
use tokio::sync::watch;
use tonic::transport::Endpoint;

use crate::alarm::Alarms;
use crate::membership::Membership;
use crate::mvcc::Store;
use crate::node::Node;

/// How long one member may take to answer HashKV.
const HASH_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the check needs.
pub struct Checker {
    pub node: Arc<Node>,
    pub store: Arc<Store>,
    pub membership: Arc<Membership>,
    pub alarms: Arc<Alarms>,
    pub max_request_bytes: usize,
}

/// Given each member's hash (the leader's included), the members that disagree with the
/// majority. A tie goes to the leader's hash.
pub fn outliers(hashes: &BTreeMap<u64, u32>, leader: u64) -> Vec<u64> {
    let mut votes: BTreeMap<u32, usize> = BTreeMap::new();
    for h in hashes.values() {
        *votes.entry(*h).or_insert(0) += 1;
    }
    let leader_hash = hashes.get(&leader).copied();
    let Some(best) = votes
        .iter()
        .max_by_key(|(h, n)| (**n, Some(**h) == leader_hash))
        .map(|(h, _)| *h)
    else {
        return Vec::new();
    };
    hashes
        .iter()
        .filter(|(_, h)| **h != best)
        .map(|(m, _)| *m)
        .collect()
}

impl Checker {
    /// Runs a check every `every` while this member leads, until `stop`.
    pub async fn run(self, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if self.node.status().is_leader && !self.alarms.has(AlarmType::Corrupt) {
                self.check_once().await;
            }
        }
    }

    /// Compares every reachable member's HashKV at the leader's current revision.
    async fn check_once(&self) {
        let revision = self.store.revision();
        let compacted = self.store.compacted_revision();
        let db = self.store.db();
        let own = tokio::task::spawn_blocking(move || crate::storage::hash_kv(&db, revision)).await;
        let own = match own {
            Ok(Ok(h)) => h,
            _ => return,
        };
        let mut hashes = BTreeMap::from([(self.node.member_id, own)]);
        for m in self.membership.list() {
            if m.id == self.node.member_id {
                continue;
            }
            let Some(url) = m.client_urls.first() else {
                continue;
            };
            if let Some(hash) = ask(url, revision, compacted).await {
                hashes.insert(m.id, hash);
            }
        }
        let bad = outliers(&hashes, self.node.member_id);
        if bad.is_empty() {
            tracing::debug!(revision, members = hashes.len(), "corruption check passed");
            return;
        }
        for member in bad {
            tracing::error!(
                member = format!("{member:x}"),
                revision,
                "corruption check: this member's history differs from the majority's; raising CORRUPT"
            );
            let raise = Op::Alarm(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: member,
                alarm: AlarmType::Corrupt as i32,
            });
            if let Err(e) = self.node.propose(raise, self.max_request_bytes).await {
                tracing::warn!(error = %e, "could not raise CORRUPT");
            }
        }
    }
}

/// A member's HashKV at `revision`, if it has the same compaction point; `None` to skip it.
async fn ask(url: &str, revision: i64, compacted: i64) -> Option<u32> {
    let channel = Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .timeout(HASH_TIMEOUT)
        .connect()
        .await
        .ok()?;
    let r = MaintenanceClient::new(channel)
        .hash_kv(HashKvRequest { revision })
        .await
        .ok()?
        .into_inner();
    (r.compact_revision == compacted).then_some(r.hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minority_is_flagged_and_a_tie_goes_to_the_leader() {
        let h = BTreeMap::from([(1, 7), (2, 7), (3, 9)]);
        assert_eq!(outliers(&h, 1), vec![3]);
        // The leader itself can be the odd one out.
        assert_eq!(outliers(&h, 3), vec![3]);
        let tie = BTreeMap::from([(1, 7), (2, 9)]);
        assert_eq!(outliers(&tie, 1), vec![2]);
        assert_eq!(outliers(&tie, 2), vec![1]);
        assert!(outliers(&BTreeMap::from([(1, 7), (2, 7)]), 1).is_empty());
    }
}
