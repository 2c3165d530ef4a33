//! Maintenance calls. `status` asks one member about itself (leader, raft indexes, db size); with
//! no endpoint named it fails over like any read. `move_leader` is the only call that changes
//! cluster state: it finds the leader among the endpoints and asks it to hand over.

use conclave_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use conclave_proto::etcdserverpb::{
    MoveLeaderRequest, MoveLeaderResponse, StatusRequest, StatusResponse,
};

use crate::client::{Client, Retry};
use crate::error::Error;

/// Maintenance operations of a [`Client`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Maintenance {
    client: Client,
}

impl Maintenance {
    pub(crate) fn new(client: Client) -> Self {
        Maintenance { client }
    }

    /// Status of the current endpoint's member, moving to the next endpoint when it is
    /// unavailable. The answer describes whichever member answered (`header.member_id`).
    pub async fn status(&self) -> Result<StatusResponse, Error> {
        self.client
            .call(Retry::Safe, StatusRequest {}, |channel, request| async move {
                MaintenanceClient::new(channel).status(request).await
            })
            .await
    }

    /// Status of the member at `endpoint` exactly, with no failover; an unreachable member gives
    /// [`Error::Unavailable`] (or [`Error::Timeout`]). `endpoint` need not be one of the client's
    /// endpoints.
    pub async fn status_on(&self, endpoint: &str) -> Result<StatusResponse, Error> {
        self.client
            .call_on(endpoint, Retry::Safe, StatusRequest {}, |channel, request| async move {
                MaintenanceClient::new(channel).status(request).await
            })
            .await
    }

    /// Transfers leadership to member `target_id`. The request must reach the current leader, so
    /// each endpoint is asked for its status first; the first one that leads gets the request.
    pub async fn move_leader(&self, target_id: u64) -> Result<MoveLeaderResponse, Error> {
        let endpoints = self.client.endpoints();
        let mut last = Error::Status(tonic::Status::failed_precondition(format!(
            "no leader among the endpoints {endpoints:?}"
        )));
        for endpoint in endpoints {
            match self.status_on(&endpoint).await {
                Ok(s) if s.header.as_ref().is_some_and(|h| h.member_id == s.leader) => {
                    return self
                        .client
                        .call_on(
                            &endpoint,
                            Retry::OnlyIfNotSent,
                            MoveLeaderRequest { target_id },
                            |channel, request| async move {
                                MaintenanceClient::new(channel).move_leader(request).await
                            },
                        )
                        .await;
                }
                Ok(_) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
