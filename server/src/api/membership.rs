//! conclave.v1.Membership: group membership, Conclave's extension to the etcd API. The server runs
//! the client's group recipe (`conclave_client::Group`) against itself ([`Loopback`]), so members
//! joined through the service and through the recipe (or through etcdctl, on the same keys) are one
//! group.
//!
//! Contract: Join puts the member on its lease (a new lease of `ttl` seconds when `lease` is 0; the
//! caller keeps it alive with LeaseKeepAlive); a member needs one or the other ("conclave: a member
//! needs a lease or a ttl", InvalidArgument). Leave deletes it. List answers the members at the
//! header's revision; Watch from that revision + 1 reports every join, update and leave after it.
//! Group names are not empty and have no `/`; member ids are not empty (InvalidArgument).

use std::pin::Pin;
use std::sync::Arc;

use conclave_client::{Error as ClientError, Group};
use conclave_proto::conclave::v1::membership_server::Membership;
use conclave_proto::conclave::v1::{
    JoinRequest, JoinResponse, LeaveRequest, LeaveResponse, ListRequest, ListResponse,
    WatchGroupRequest, WatchGroupResponse,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::Context;
use super::loopback::Loopback;
use super::status::from_client;

pub struct MembershipService {
    loopback: Arc<Loopback>,
    ctx: Arc<Context>,
}

impl MembershipService {
    pub fn new(loopback: Arc<Loopback>, ctx: Arc<Context>) -> Self {
        MembershipService { loopback, ctx }
    }

    async fn group(&self, name: &str) -> Result<Group, Status> {
        let client = self.loopback.client().await?;
        Group::new(client, name).map_err(invalid)
    }
}

fn invalid(e: ClientError) -> Status {
    Status::invalid_argument(e.to_string())
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchGroupResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Membership for MembershipService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = req.into_inner();
        if req.member_id.is_empty() {
            return Err(Status::invalid_argument(
                "conclave: a member id is required",
            ));
        }
        let group = self.group(&req.group).await?;
        let lease = match (req.lease, req.ttl) {
            (0, ttl) if ttl > 0 => {
                let client = self.loopback.client().await?;
                client
                    .lease()
                    .grant(ttl, None)
                    .await
                    .map_err(from_client)?
                    .id
            }
            (0, _) => {
                return Err(Status::invalid_argument(
                    "conclave: a member needs a lease or a ttl",
                ));
            }
            (lease, _) => lease,
        };
        let (header, member) = group
            .join(lease, req.member_id, req.metadata)
            .await
            .map_err(from_client)?;
        Ok(Response::new(JoinResponse {
            header,
            member: Some(member),
        }))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let req = req.into_inner();
        if req.member_id.is_empty() {
            return Err(Status::invalid_argument(
                "conclave: a member id is required",
            ));
        }
        let (header, left) = self
            .group(&req.group)
            .await?
            .leave(req.member_id)
            .await
            .map_err(from_client)?;
        Ok(Response::new(LeaveResponse { header, left }))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let (header, members) = self
            .group(&req.into_inner().group)
            .await?
            .list_with_header()
            .await
            .map_err(from_client)?;
        Ok(Response::new(ListResponse { header, members }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        req: Request<WatchGroupRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let changes = self
            .group(&req.group)
            .await?
            .watch(req.start_revision)
            .await
            .map_err(from_client)?;
        let ctx = self.ctx.clone();
        // The stream owns the group watch: when the caller goes away, tonic drops both.
        let events = futures::stream::unfold(changes, |mut c| async move {
            c.next().await.map(|item| (item, c))
        })
        .map(move |item| {
            item.map_err(from_client).map(|events| WatchGroupResponse {
                header: Some(ctx.header(events.last().map_or(0, |e| e.revision))),
                events,
            })
        });
        Ok(Response::new(Box::pin(events)))
    }
}
