//! etcdserverpb.Maintenance: Status with real values (etcdctl and clients use it to find members and
//! the leader), MoveLeader, Hash and HashKV (crc32, identical on every member at the same state),
//! and Snapshot: a consistent backup streamed from one read transaction, with its exact length
//! announced (`remaining_bytes`) and a checksum at its end (see `storage::backup`), and Alarm
//! (see `alarm`). Status reports raised alarms in `errors` and the stored history (what the
//! space quota measures) as `dbSizeInUse`. Defragment compacts this member's database file while it
//! keeps serving (see `node::defrag`); learners may be defragmented too.

use std::pin::Pin;
use std::sync::Arc;

use conclave_proto::etcdserverpb::maintenance_server::Maintenance;
use conclave_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use futures::Stream;
use redb::ReadableDatabase;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::Context;
use crate::apply::ApplyOutput;
use crate::error::ServerError;
use crate::storage::{self, StorageError, backup, snapshot};
use conclave_proto::conclave::internal::v1::raft_command::Op;
use conclave_proto::etcdserverpb::AlarmType;
use conclave_proto::etcdserverpb::alarm_request::AlarmAction;

/// Size of one Snapshot response's blob.
const BACKUP_CHUNK: usize = 1024 * 1024;

fn storage_status(e: StorageError) -> Status {
    Status::from(ServerError::from(e))
}

/// Hands the backup stream to the gRPC response in chunks, each with the bytes still to come.
struct BackupChunks {
    out: mpsc::Sender<Result<SnapshotResponse, Status>>,
    buf: Vec<u8>,
    remaining: u64,
    header: Option<conclave_proto::etcdserverpb::ResponseHeader>,
}

impl BackupChunks {
    fn ship(&mut self) -> std::io::Result<()> {
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(BACKUP_CHUNK));
        self.remaining = self.remaining.saturating_sub(blob.len() as u64);
        let chunk = SnapshotResponse {
            header: self.header.take(),
            remaining_bytes: self.remaining,
            blob,
        };
        self.out
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl std::io::Write for BackupChunks {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(BACKUP_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BACKUP_CHUNK {
            self.ship()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.ship()?;
        }
        Ok(())
    }
}

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
    /// GET lists the raised alarms; ACTIVATE and DEACTIVATE go through raft.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = req.into_inner();
        let alarms = if req.action == AlarmAction::Get as i32 {
            self.ctx.node.read_barrier().await?;
            self.ctx.alarms.list()
        } else {
            let max = self.ctx.limits.max_request_bytes;
            match self.ctx.node.propose(Op::Alarm(req), max).await? {
                ApplyOutput::Alarms(list) => list,
                other => return Err(super::kv::unexpected(&other)),
            }
        };
        Ok(Response::new(AlarmResponse {
            header: Some(self.ctx.header(0)),
            alarms,
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let raft = self.ctx.node.status();
        let is_learner = self
            .ctx
            .membership
            .get(self.ctx.node.member_id)
            .is_some_and(|m| m.is_learner);
        let db_size = storage::file_size(&self.ctx.data_dir) as i64;
        Ok(Response::new(StatusResponse {
            header: Some(self.ctx.header(0)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: raft.leader,
            raft_index: raft.commit,
            raft_term: raft.term,
            raft_applied_index: self.ctx.node.applied_index(),
            errors: self
                .ctx
                .alarms
                .list()
                .iter()
                .map(|a| {
                    format!(
                        "memberID:{} alarm:{}",
                        a.member_id,
                        AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name())
                    )
                })
                .collect(),
            db_size_in_use: self.ctx.store.stored_bytes() as i64,
            is_learner,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.ctx.node.defragment().await?;
        Ok(Response::new(DefragmentResponse {
            header: Some(self.ctx.header(0)),
        }))
    }

    /// crc32 of the whole state (history, leases, members) as of now on this member.
    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let db = self.ctx.store_db();
        let hash = tokio::task::spawn_blocking(move || -> Result<u32, StorageError> {
            let txn = db.begin_read()?;
            let mut sum = Crc(crc32fast::Hasher::new());
            snapshot::write_rows(&txn, &mut sum)?;
            Ok(sum.0.finalize())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(storage_status)?;
        Ok(Response::new(HashResponse {
            header: Some(self.ctx.header(0)),
            hash,
        }))
    }

    /// crc32 of the MVCC rows up to `revision` (0: the newest), with the compaction point.
    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let revision = req.into_inner().revision;
        let newest = self.ctx.store.revision();
        if revision > newest {
            return Err(ServerError::FutureRevision.into());
        }
        let compacted = self.ctx.store.compacted_revision();
        if revision > 0 && revision < compacted {
            return Err(ServerError::Compacted.into());
        }
        let upto = if revision > 0 { revision } else { newest };
        let db = self.ctx.store_db();
        let hash = tokio::task::spawn_blocking(move || storage::hash_kv(&db, upto))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(storage_status)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.ctx.header(upto)),
            hash,
            compact_revision: compacted,
        }))
    }

    type SnapshotStream = SnapshotChunks;

    /// A consistent backup of this member's state, streamed as it is read.
    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let db = self.ctx.store_db();
        let (cluster_id, member_id) = (self.ctx.node.cluster_id, self.ctx.node.member_id);
        let header = Some(self.ctx.header(0));
        let (out, chunks) = mpsc::channel(4);
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || {
            let run = || -> Result<u64, StorageError> {
                let txn = db.begin_read()?;
                let total = backup::size(&txn)?;
                let mut writer = BackupChunks {
                    out: out.clone(),
                    buf: Vec::with_capacity(BACKUP_CHUNK),
                    remaining: total,
                    header,
                };
                backup::write(&txn, cluster_id, member_id, &mut writer)
            };
            match run() {
                Ok(bytes) => tracing::info!(
                    bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "backup sent"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "backup failed");
                    let _ = out.blocking_send(Err(storage_status(e)));
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(chunks),
        )))
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

/// A `Write` that only computes a crc32.
struct Crc(crc32fast::Hasher);

impl std::io::Write for Crc {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.update(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
