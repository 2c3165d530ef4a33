//! etcdserverpb.Maintenance: Status with real values (etcdctl and clients use it to find members and
//! the leader) and MoveLeader. Alarms, hashes, defragmentation and snapshots arrive with the
//! cluster-operations work and answer `Unimplemented` until then.

use std::pin::Pin;
use std::sync::Arc;

use conclave_proto::etcdserverpb::maintenance_server::Maintenance;
use conclave_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::Context;
use crate::error::ServerError;
use crate::storage;

/// The etcd version whose API this server speaks (reported in Status.version).
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    ctx: Arc<Context>,
}

impl MaintenanceService {
    pub fn new(ctx: Arc<Context>) -> Self {
        MaintenanceService { ctx }
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("conclave: {what} is not supported yet"))
}

type SnapshotChunks = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, _: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Err(not_yet("Alarm"))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let raft = self.ctx.node.status();
        let db_size = storage::file_size(&self.ctx.data_dir) as i64;
        Ok(Response::new(StatusResponse {
            header: Some(self.ctx.header(0)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: raft.leader,
            raft_index: raft.commit,
            raft_term: raft.term,
            raft_applied_index: self.ctx.node.applied_index(),
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(not_yet("Defragment"))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(not_yet("Hash"))
    }

    async fn hash_kv(&self, _: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(not_yet("HashKV"))
    }

    type SnapshotStream = SnapshotChunks;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_yet("Snapshot"))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        // etcd's order: "not leader" before "bad leader transferee". The node checks leadership
        // again when it acts; only this layer knows the member table.
        if !self.ctx.node.status().is_leader {
            return Err(ServerError::NotLeader.into());
        }
        match self.ctx.membership.get(target) {
            Some(m) if !m.is_learner => {}
            _ => return Err(ServerError::BadLeaderTransferee.into()),
        }
        self.ctx.node.transfer_leadership(target).await?;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.ctx.header(0)),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(not_yet("Downgrade"))
    }
}
