//! v3electionpb.Election, as etcd serves it: the server runs the client's election recipe
//! (`conclave_client::Election`) against itself ([`Loopback`]).
//!
//! Contract: Campaign(name, lease, value) waits until elected and answers the leader key (name,
//! key `<name>/<lease hex>`, create revision, lease); Proclaim(leader, value) and Resign(leader)
//! act only while that key still has that create revision ("election: not leader" otherwise);
//! Leader(name) answers the leader's key-value ("election: no leader"); Observe(name) streams every
//! leader and every value it proclaims. A request without `leader` answers etcd's
//! `"leader" field must be provided`. The caller keeps its lease alive; a campaign without one (0)
//! gets a lease of 60 s, as etcd does.

use std::pin::Pin;
use std::sync::Arc;

use conclave_client::{Election, Leadership};
use conclave_proto::v3electionpb::election_server::Election as ElectionRpc;
use conclave_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::Context;
use super::loopback::Loopback;
use super::status::from_client;

pub struct ElectionService {
    loopback: Arc<Loopback>,
    ctx: Arc<Context>,
}

impl ElectionService {
    pub fn new(loopback: Arc<Loopback>, ctx: Arc<Context>) -> Self {
        ElectionService { loopback, ctx }
    }
}

fn leadership(key: Option<LeaderKey>) -> Result<Leadership, Status> {
    let key = key.ok_or_else(|| Status::unknown("\"leader\" field must be provided"))?;
    Ok(Leadership::resume(key.name, key.key, key.rev, key.lease))
}

type LeaderStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ElectionRpc for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let req = req.into_inner();
        let client = self.loopback.client().await?;
        let lease = self.loopback.lease_or_new(req.lease).await?;
        let won = Election::new(client, req.name)
            .campaign_with_lease(lease, req.value)
            .await
            .map_err(from_client)?;
        Ok(Response::new(CampaignResponse {
            header: won.header().cloned(),
            leader: Some(LeaderKey {
                name: won.name().to_vec(),
                key: won.key().to_vec(),
                rev: won.revision(),
                lease: won.lease(),
            }),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let req = req.into_inner();
        let mut leader = leadership(req.leader)?;
        let client = self.loopback.client().await?;
        leader
            .proclaim(client, req.value)
            .await
            .map_err(from_client)?;
        Ok(Response::new(ProclaimResponse {
            header: leader.header().cloned(),
        }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let client = self.loopback.client().await?;
        let (header, kv) = Election::new(client, req.into_inner().name)
            .leader()
            .await
            .map_err(from_client)?;
        Ok(Response::new(LeaderResponse {
            header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = LeaderStream;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let client = self.loopback.client().await?;
        let observer = Election::new(client, req.into_inner().name).observe();
        let ctx = self.ctx.clone();
        // The stream owns the observer: when the caller goes away, tonic drops both, and the
        // observer's watches end with it. An error ends the stream (tonic sends it as the status).
        let leaders = futures::stream::unfold(observer, |mut o| async move {
            o.next().await.map(|item| (item, o))
        })
        .map(move |item| {
            // The member's current revision, as etcd's response headers carry.
            item.map_err(from_client).map(|kv| LeaderResponse {
                header: Some(ctx.header(0)),
                kv: Some(kv),
            })
        });
        Ok(Response::new(Box::pin(leaders)))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let leader = leadership(req.into_inner().leader)?;
        let client = self.loopback.client().await?;
        let header = leader.resign(client).await.map_err(from_client)?;
        Ok(Response::new(ResignResponse { header }))
    }
}
