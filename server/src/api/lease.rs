//! etcdserverpb.Lease, and conclave.peer.v1.LeaseForward (served on the peer port).
//!
//! Grant and revoke go through raft. KeepAlive and TimeToLive are answered by the leader (only it
//! knows expiry times): on a follower they are forwarded to the leader's peer URL, where the
//! `LeaseForward` service answers them without forwarding again. Leases lists this member's
//! leases after a read barrier.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};

use super::Context;
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

/// Lazily connected channels to other members' peer URLs.
#[derive(Default)]
pub struct PeerChannels {
    channels: Mutex<HashMap<String, Channel>>,
}

impl PeerChannels {
    fn get(&self, url: &str) -> Result<Channel, Status> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(url) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| Status::internal(format!("conclave: bad peer URL {url}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(url.to_string(), channel.clone());
        Ok(channel)
    }
}

pub struct LeaseService {
    ctx: Arc<Context>,
    peers: Arc<PeerChannels>,
}

impl LeaseService {
    pub fn new(ctx: Arc<Context>, peers: Arc<PeerChannels>) -> Self {
        LeaseService { ctx, peers }
    }
}

/// Calls `here` when this member leads, otherwise `forward` on the leader's peer channel; retries
/// while leadership moves, until the request timeout.
async fn on_leader<T, H, HF, F, FF>(
    ctx: &Context,
    peers: &PeerChannels,
    here: H,
    forward: F,
) -> Result<T, Status>
where
    H: Fn() -> HF,
    HF: Future<Output = Result<T, ServerError>>,
    F: Fn(LeaseForwardClient<Channel>) -> FF,
    FF: Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + ctx.request_timeout;
    loop {
        let status = ctx.node.status();
        let outcome = if status.is_leader {
            here().await.map_err(Status::from)
        } else if status.leader == 0 {
            Err(ServerError::NoLeader.into())
        } else {
            let url = ctx
                .membership
                .get(status.leader)
                .and_then(|m| m.peer_urls.first().cloned());
            match url {
                Some(url) => {
                    let client = LeaseForwardClient::new(peers.get(&url)?);
                    let attempt = deadline.min(Instant::now() + FORWARD_ATTEMPT);
                    match tokio::time::timeout_at(attempt, forward(client)).await {
                        Ok(r) => r,
                        Err(_) => Err(ServerError::Timeout.into()),
                    }
                }
                None => Err(ServerError::NoLeader.into()),
            }
        };
        match outcome {
            Err(s) if retryable(&s) && Instant::now() + LEADER_RETRY < deadline => {
                tokio::time::sleep(LEADER_RETRY).await;
            }
            other => return other,
        }
    }
}

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
        || renew_here(ctx, id),
        |mut c| async move {
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
        let mut req = req.into_inner();
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
        let req = req.into_inner();
        let ctx = &self.ctx;
        let resp = on_leader(
            ctx,
            &self.peers,
            || time_to_live_here(ctx, &req),
            |mut c| async move { Ok(c.time_to_live(req).await?.into_inner()) },
        )
        .await?;
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
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
