//! etcdserverpb.Cluster, and conclave.peer.v1.ClusterForward (served on the peer port).
//!
//! Membership changes are decided by the leader, which alone knows how replication stands, by the
//! rules of `membership::rules`: a learner is promoted only once it has at least 90% of the
//! leader's log (etcd's rule), and, as etcd's strict reconfiguration check, a change must leave
//! enough recently active voters for a quorum. A follower forwards MemberAdd/Remove/Update/Promote to the leader's `ClusterForward`,
//! which never forwards again. Removing the leader first moves leadership to the most up-to-date
//! active voter, which then performs the removal. A forwarded request is retried only when it
//! certainly did not reach raft (no leader, not the leader): a membership change is not
//! idempotent. A removed member that missed its own removal learns it from its peers, which
//! refuse its messages.

use std::sync::Arc;
use std::time::Duration;

use conclave_proto::conclave::internal::v1::MemberRecord;
use conclave_proto::conclave::peer::v1::cluster_forward_client::ClusterForwardClient;
use conclave_proto::conclave::peer::v1::cluster_forward_server::ClusterForward;
use conclave_proto::etcdserverpb::cluster_server::Cluster;
use conclave_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::Context;
use super::leader::{Forwarding, PeerChannels, on_leader};
use crate::apply::ApplyOutput;
use crate::error::ServerError;
use crate::membership::rules::{enough_started, learner_ready, new_member_id};
use crate::membership::{self, Change};

/// Pause before asking again when the leader is unknown or just changed.
const LEADER_RETRY: Duration = Duration::from_millis(100);

fn to_member(m: MemberRecord) -> Member {
    Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

fn members(records: Vec<MemberRecord>) -> Vec<Member> {
    records.into_iter().map(to_member).collect()
}

/// The leader's side of every change: checks, then proposes and waits for the table after it.
async fn change_here(ctx: &Context, change: Change) -> Result<Vec<MemberRecord>, ServerError> {
    ctx.membership.check(&change)?;
    let progress = ctx.node.progress().await?.ok_or(ServerError::NotLeader)?;
    if let Change::Promote(id) = &change
        && !learner_ready(&progress, *id)
    {
        return Err(ServerError::LearnerNotReady);
    }
    if !enough_started(&progress, &change) {
        return Err(ServerError::MemberNotEnoughStarted);
    }
    if let Change::Remove(id) = &change
        && *id == ctx.node.member_id
    {
        let successor = progress
            .successor(*id)
            .ok_or(ServerError::MemberNotEnoughStarted)?;
        tracing::info!(
            successor = format!("{successor:x}"),
            "removing the leader: moving leadership first"
        );
        ctx.node.transfer_leadership(successor).await?;
        // The successor proposes the removal: a removed member may never apply its own removal
        // (replication to it stops once the leader applies it), so it could not answer. "Not
        // leader" sends the request there (see `on_leader`).
        return Err(ServerError::NotLeader);
    }
    match ctx
        .node
        .propose_change(change, ctx.limits.max_request_bytes)
        .await?
    {
        ApplyOutput::Members(list) => Ok(list),
        _ => Err(ServerError::NotCapable),
    }
}

async fn add_here(ctx: &Context, req: MemberAddRequest) -> Result<MemberAddResponse, ServerError> {
    membership::check_urls(&req.peer_ur_ls)?;
    let record = MemberRecord {
        id: new_member_id(&req.peer_ur_ls, ctx.node.cluster_id),
        name: String::new(),
        peer_urls: req.peer_ur_ls,
        client_urls: Vec::new(),
        is_learner: req.is_learner,
    };
    let list = change_here(ctx, Change::Add(record.clone())).await?;
    Ok(MemberAddResponse {
        header: Some(ctx.header(0)),
        member: Some(to_member(record)),
        members: members(list),
    })
}

async fn remove_here(
    ctx: &Context,
    req: MemberRemoveRequest,
) -> Result<MemberRemoveResponse, ServerError> {
    let list = change_here(ctx, Change::Remove(req.id)).await?;
    Ok(MemberRemoveResponse {
        header: Some(ctx.header(0)),
        members: members(list),
    })
}

async fn update_here(
    ctx: &Context,
    req: MemberUpdateRequest,
) -> Result<MemberUpdateResponse, ServerError> {
    let change = Change::Update {
        id: req.id,
        peer_urls: req.peer_ur_ls,
    };
    let list = change_here(ctx, change).await?;
    Ok(MemberUpdateResponse {
        header: Some(ctx.header(0)),
        members: members(list),
    })
}

async fn promote_here(
    ctx: &Context,
    req: MemberPromoteRequest,
) -> Result<MemberPromoteResponse, ServerError> {
    let list = change_here(ctx, Change::Promote(req.id)).await?;
    Ok(MemberPromoteResponse {
        header: Some(ctx.header(0)),
        members: members(list),
    })
}

/// Membership changes on the leader: retried only when they certainly never reached raft (a
/// change is not idempotent), until the request deadline.
const FORWARDING: Forwarding = Forwarding {
    pause: LEADER_RETRY,
    attempt: None,
    retry: not_sent,
};

fn not_sent(s: &Status) -> bool {
    s.message() == ServerError::NoLeader.to_string()
        || s.message() == ServerError::NotLeader.to_string()
}

pub struct ClusterService {
    ctx: Arc<Context>,
    peers: Arc<PeerChannels>,
}

impl ClusterService {
    pub fn new(ctx: Arc<Context>, peers: Arc<PeerChannels>) -> Self {
        ClusterService { ctx, peers }
    }
}

/// The member list of this member; after a read barrier if `linearizable`.
async fn list(ctx: &Context, req: MemberListRequest) -> Result<MemberListResponse, Status> {
    if req.linearizable {
        ctx.refuse_learner()?;
        ctx.node.read_barrier().await?;
    }
    Ok(MemberListResponse {
        header: Some(ctx.header(0)),
        members: members(ctx.membership.list()),
    })
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.ctx.refuse_learner()?;
        let req = req.into_inner();
        let ctx = &self.ctx;
        on_leader(
            ctx,
            &self.peers,
            &FORWARDING,
            || add_here(ctx, req.clone()),
            |channel| {
                let mut c = ClusterForwardClient::new(channel);
                let req = req.clone();
                async move { Ok(c.member_add(req).await?.into_inner()) }
            },
        )
        .await
        .map(Response::new)
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.ctx.refuse_learner()?;
        let req = req.into_inner();
        let ctx = &self.ctx;
        on_leader(
            ctx,
            &self.peers,
            &FORWARDING,
            || remove_here(ctx, req),
            |channel| async move {
                let mut c = ClusterForwardClient::new(channel);
                Ok(c.member_remove(req).await?.into_inner())
            },
        )
        .await
        .map(Response::new)
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.ctx.refuse_learner()?;
        let req = req.into_inner();
        let ctx = &self.ctx;
        on_leader(
            ctx,
            &self.peers,
            &FORWARDING,
            || update_here(ctx, req.clone()),
            |channel| {
                let mut c = ClusterForwardClient::new(channel);
                let req = req.clone();
                async move { Ok(c.member_update(req).await?.into_inner()) }
            },
        )
        .await
        .map(Response::new)
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        list(&self.ctx, req.into_inner()).await.map(Response::new)
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.ctx.refuse_learner()?;
        let req = req.into_inner();
        let ctx = &self.ctx;
        on_leader(
            ctx,
            &self.peers,
            &FORWARDING,
            || promote_here(ctx, req),
            |channel| async move {
                let mut c = ClusterForwardClient::new(channel);
                Ok(c.member_promote(req).await?.into_inner())
            },
        )
        .await
        .map(Response::new)
    }
}

/// The leader's end of forwarded membership changes (and any member's list, for joiners).
pub struct ClusterForwardService {
    ctx: Arc<Context>,
}

impl ClusterForwardService {
    pub fn new(ctx: Arc<Context>) -> Self {
        ClusterForwardService { ctx }
    }

    fn leading(&self) -> Result<(), Status> {
        if self.ctx.node.status().is_leader {
            Ok(())
        } else {
            Err(ServerError::NotLeader.into())
        }
    }
}

#[tonic::async_trait]
impl ClusterForward for ClusterForwardService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.leading()?;
        Ok(Response::new(add_here(&self.ctx, req.into_inner()).await?))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.leading()?;
        Ok(Response::new(
            remove_here(&self.ctx, req.into_inner()).await?,
        ))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.leading()?;
        Ok(Response::new(
            update_here(&self.ctx, req.into_inner()).await?,
        ))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.leading()?;
        Ok(Response::new(
            promote_here(&self.ctx, req.into_inner()).await?,
        ))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        list(&self.ctx, req.into_inner()).await.map(Response::new)
    }
}
