//! gRPC services: one file per service. They validate, translate and wait — no business logic:
//! writes go to `Node::propose`, reads to `kv_ops` after `Node::read_barrier`, and every error
//! leaves through the one table in `status`.

pub mod cluster;
pub mod election;
pub mod kv;
pub mod leader;
pub mod lease;
pub mod lock;
pub mod loopback;
pub mod maintenance;
pub mod membership;
pub mod on_runtime;
pub mod peer;
pub mod status;
pub mod validate;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use conclave_proto::etcdserverpb::ResponseHeader;

use crate::alarm::{self, Alarms};
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::mvcc::Store;
use crate::node::Node;
use crate::watch::WatchHub;

/// Request limits (etcd's flags and defaults).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// `--quota-backend-bytes`: the most history stored before NOSPACE.
    pub quota_bytes: u64,
}

/// What every service needs of the member.
pub struct Context {
    pub node: Arc<Node>,
    pub store: Arc<Store>,
    pub lessor: Arc<Lessor>,
    pub hub: Arc<WatchHub>,
    pub membership: Arc<Membership>,
    pub alarms: Arc<Alarms>,
    pub limits: Limits,
    pub data_dir: PathBuf,
    /// How long a request may wait for raft before answering "timed out".
    pub request_timeout: Duration,
}

impl Context {
    /// A full response header; `revision` 0 means the store's newest revision.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.node.cluster_id,
            member_id: self.node.member_id,
            revision: if revision > 0 {
                revision
            } else {
                self.store.revision()
            },
            raft_term: self.node.status().term,
        }
    }

    /// Refuses what a learner does not serve (etcd: only serializable reads, status and the
    /// member list).
    pub fn refuse_learner(&self) -> Result<(), tonic::Status> {
        if self.membership.is_learner(self.node.member_id) {
            return Err(crate::error::ServerError::NotSupportedForLearner.into());
        }
        Ok(())
    }

    /// The member's database.
    pub fn store_db(&self) -> Arc<redb::Database> {
        self.store.db()
    }

    /// Refuses writes while a CORRUPT alarm is raised (as etcd: "corrupt cluster").
    pub fn refuse_if_corrupt(&self) -> Result<(), tonic::Status> {
        use conclave_proto::etcdserverpb::AlarmType;
        if self.alarms.has(AlarmType::Corrupt) {
            return Err(crate::error::ServerError::Corrupt.into());
        }
        Ok(())
    }

    /// Refuses a write that adds `incoming` bytes of data while NOSPACE is raised, or that would
    /// take the history over the quota (and raises NOSPACE then, as etcd does).
    pub async fn check_space(&self, incoming: usize) -> Result<(), tonic::Status> {
        let quota = alarm::Quota {
            bytes: self.limits.quota_bytes,
            max_request_bytes: self.limits.max_request_bytes,
        };
        Ok(alarm::admit(&self.node, &self.store, &self.alarms, quota, incoming).await?)
    }

    /// A fresh lease id for a grant that left it to the server: positive, not in use.
    pub fn new_lease_id(&self) -> i64 {
        loop {
            let id = rand::random::<i64>() & i64::MAX;
            if id != 0 && !self.lessor.exists(id) {
                return id;
            }
        }
    }

    /// Completes a header that carries only a revision (as `kv_ops` and apply produce them).
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
    }
}
