//! etcdserverpb.KV: Range (linearizable through a read barrier unless `serializable`), and Put,
//! DeleteRange, Txn, Compact through raft.

use std::sync::Arc;

use conclave_proto::conclave::internal::v1::raft_command::Op;
use conclave_proto::etcdserverpb::kv_server::Kv;
use conclave_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

use super::{Context, validate};
use crate::apply::ApplyOutput;
use crate::kv_ops;

pub struct KvService {
    ctx: Arc<Context>,
}

impl KvService {
    pub fn new(ctx: Arc<Context>) -> Self {
        KvService { ctx }
    }

    async fn propose(&self, op: Op) -> Result<ApplyOutput, Status> {
        self.ctx.refuse_learner()?;
        self.ctx.refuse_if_corrupt()?;
        Ok(self
            .ctx
            .node
            .propose(op, self.ctx.limits.max_request_bytes)
            .await?)
    }
}

pub(super) fn unexpected(out: &ApplyOutput) -> Status {
    Status::internal(format!("conclave: unexpected apply result {out:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        validate::range(&req)?;
        if !req.serializable {
            self.ctx.refuse_learner()?;
            self.ctx.node.read_barrier().await?;
        }
        let mut resp = kv_ops::range(&*self.ctx.store, &req)?;
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        validate::put(&req)?;
        self.ctx
            .check_space(req.key.len() + req.value.len())
            .await?;
        match self.propose(Op::Put(req)).await? {
            ApplyOutput::Put(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        validate::delete_range(&req)?;
        match self.propose(Op::DeleteRange(req)).await? {
            ApplyOutput::DeleteRange(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = req.into_inner();
        validate::txn(&req, self.ctx.limits.max_txn_ops)?;
        let added = validate::put_bytes(&req);
        if added > 0 {
            self.ctx.check_space(added).await?;
        }
        match self.propose(Op::Txn(req)).await? {
            ApplyOutput::Txn(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = req.into_inner();
        // Compaction is applied synchronously inside apply, so `physical` is always satisfied
        // when the answer arrives.
        match self.propose(Op::Compaction(req)).await? {
            ApplyOutput::Compaction(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(&other)),
        }
    }
}
