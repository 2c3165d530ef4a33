//! Maintenance calls. `status` asks one member about itself (leader, raft indexes, db size); with
//! no endpoint named it fails over like any read. Never changes cluster state.

use conclave_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use conclave_proto::etcdserverpb::{StatusRequest, StatusResponse};

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
}
