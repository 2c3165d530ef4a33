//! etcdserverpb.Lease, and conclave.peer.v1.LeaseForward (served on the peer port).
//!
//! Grant and revoke go through raft. KeepAlive and TimeToLive are answered by the leader (only it
//! knows expiry times): on a follower they are forwarded to the leader's peer URL, where the
//! `LeaseForward` service answers them without forwarding again. Leases lists this member's
//! leases after a read barrier.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use conclave_proto::conclave::internal::v1::raft_command::Op;
use conclave_proto::conclave::peer::v1::lease_forward_client::LeaseForwardClient;
use conclave_proto::conclave::peer::v1::lease_forward_server::LeaseForward;
use conclave_proto::etcdserverpb::lease_server::Lease;
use conclave_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};

use super::Context;
use super::leader::{Forwarding, PeerChannels, on_leader};
use crate::apply::ApplyOutput;
use crate::error::ServerError;
use crate::lease::{MAX_LEASE_TTL, leader};

/// Pause before asking again when the leader is unknown or just changed.
const LEADER_RETRY: Duration = Duration::from_millis(50);
/// One forwarding attempt at most: a leader answers a keep-alive in a heartbeat round trip. A
/// leader that does not answer by then may be paused or cut off; asking again lets the next
/// attempt go to whoever leads by then, long before the client's TTL runs out.
const FORWARD_ATTEMPT: Duration = Duration::from_millis(250);
/// Keep-alive responses buffered per stream.
const KEEP_ALIVE_BUFFER: usize = 16;

pub struct LeaseService {
    ctx: Arc<Context>,
    peers: Arc<PeerChannels>,
}

impl LeaseService {
    pub fn new(ctx: Arc<Context>, peers: Arc<PeerChannels>) -> Self {
        LeaseService { ctx, peers }
    }
}

/// Lease requests on the leader: a renewal may be asked again, and each attempt is short.
const FORWARDING: Forwarding = Forwarding {
    pause: LEADER_RETRY,
    attempt: Some(FORWARD_ATTEMPT),
    retry: retryable,
};

/// Errors that mean "ask again, leadership is moving or the old leader is gone".
fn retryable(s: &Status) -> bool {
    s.code() == Code::Unavailable
        || (s.code() == Code::FailedPrecondition
            && s.message() == ServerError::NotLeader.to_string())
}

fn renew_response(ctx: &Context, id: i64, ttl: i64) -> LeaseKeepAliveResponse {
    LeaseKeepAliveResponse {
        header: Some(ctx.header(0)),
        id,
        ttl,
    }
}

/// Renews `id` on this member (which must lead). An unknown lease answers TTL 0, as etcd.
async fn renew_here(ctx: &Context, id: i64) -> Result<LeaseKeepAliveResponse, ServerError> {
    let max = ctx.limits.max_request_bytes;
    match leader::renew(&ctx.node, &ctx.lessor, id, max, ctx.request_timeout).await {
        Ok(ttl) => Ok(renew_response(ctx, id, ttl)),
        Err(ServerError::LeaseNotFound) => Ok(renew_response(ctx, id, 0)),
        Err(e) => Err(e),
    }
}

/// Reports `id`'s TTL from this member (which must lead). An unknown lease answers TTL -1.
async fn time_to_live_here(
    ctx: &Context,
    req: &LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, ServerError> {
    let found = leader::time_to_live(
        &ctx.node,
        &ctx.lessor,
        req.id,
        req.keys,
        ctx.request_timeout,
    )
    .await?;
    Ok(match found {
        Some(t) => LeaseTimeToLiveResponse {
            header: Some(ctx.header(0)),
            id: req.id,
            ttl: t.remaining,
            granted_ttl: t.granted_ttl,
            keys: t.keys,
        },
        None => LeaseTimeToLiveResponse {
            header: Some(ctx.header(0)),
            id: req.id,
            ttl: -1,
            ..Default::default()
        },
    })
}

async fn keep_alive_once(
    ctx: &Context,
    peers: &PeerChannels,
    id: i64,
) -> Result<LeaseKeepAliveResponse, Status> {
    on_leader(
        ctx,
        peers,
        &FORWARDING,
        || renew_here(ctx, id),
        |channel| async move {
            let mut c = LeaseForwardClient::new(channel);
            Ok(c.keep_alive(LeaseKeepAliveRequest { id })
                .await?
                .into_inner())
        },
    )
    .await
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.ctx.refuse_learner()?;
        let mut req = req.into_inner();
        self.ctx.refuse_if_corrupt()?;
        // A lease takes a little space too (etcd counts it against the quota as well).
        self.ctx.check_space(64).await?;
        if req.ttl > MAX_LEASE_TTL {
            return Err(ServerError::LeaseTtlTooLarge.into());
        }
        if req.id == 0 {
            req.id = self.ctx.new_lease_id();
        }
        let max = self.ctx.limits.max_request_bytes;
        match self.ctx.node.propose(Op::LeaseGrant(req), max).await? {
            ApplyOutput::LeaseGrant(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(super::kv::unexpected(&other)),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.ctx.refuse_learner()?;
        let max = self.ctx.limits.max_request_bytes;
        let op = Op::LeaseRevoke(req.into_inner());
        match self.ctx.node.propose(op, max).await? {
            ApplyOutput::LeaseRevoke(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(super::kv::unexpected(&other)),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.ctx.refuse_learner()?;
        let mut requests = req.into_inner();
        let (tx, rx) = mpsc::channel(KEEP_ALIVE_BUFFER);
        let ctx = self.ctx.clone();
        let peers = self.peers.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = requests.message().await {
                let answer = keep_alive_once(&ctx, &peers, r.id).await;
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    // An error ends the stream, as etcd does; the client opens a new one.
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.ctx.refuse_learner()?;
        let req = req.into_inner();
        let ctx = &self.ctx;
        let resp = on_leader(
            ctx,
            &self.peers,
            &FORWARDING,
            || time_to_live_here(ctx, &req),
            |channel| async move {
                let mut c = LeaseForwardClient::new(channel);
                Ok(c.time_to_live(req).await?.into_inner())
            },
        )
        .await?;
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.ctx.refuse_learner()?;
        self.ctx.node.read_barrier().await?;
        let leases = self
            .ctx
            .lessor
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.ctx.header(0)),
            leases,
        }))
    }
}

/// The leader side of forwarded lease requests. Never forwards again.
pub struct LeaseForwardService {
    ctx: Arc<Context>,
}

impl LeaseForwardService {
    pub fn new(ctx: Arc<Context>) -> Self {
        LeaseForwardService { ctx }
    }
}

#[tonic::async_trait]
impl LeaseForward for LeaseForwardService {
    async fn keep_alive(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        let id = req.into_inner().id;
        Ok(Response::new(renew_here(&self.ctx, id).await?))
    }

    async fn time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(time_to_live_here(&self.ctx, &req).await?))
    }
}
