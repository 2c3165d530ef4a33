//! Cluster membership calls. For now only `member_list`, which is a read and fails over like one;
//! membership changes (add, remove, promote) come later.

use conclave_proto::etcdserverpb::cluster_client::ClusterClient;
use conclave_proto::etcdserverpb::{MemberListRequest, MemberListResponse};

use crate::client::{Client, Retry};
use crate::error::Error;

/// Membership operations of a [`Client`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cluster {
    client: Client,
}

impl Cluster {
    pub(crate) fn new(client: Client) -> Self {
        Cluster { client }
    }

    /// The members of the cluster, answered linearizably (the server confirms it is current
    /// before answering).
    pub async fn member_list(&self) -> Result<MemberListResponse, Error> {
        self.list(true).await
    }

    /// The members as the contacted member currently knows them (may be stale).
    pub async fn member_list_serializable(&self) -> Result<MemberListResponse, Error> {
        self.list(false).await
    }

    async fn list(&self, linearizable: bool) -> Result<MemberListResponse, Error> {
        let request = MemberListRequest { linearizable };
        self.client
            .call(Retry::Safe, request, |channel, request| async move {
                ClusterClient::new(channel).member_list(request).await
            })
            .await
    }
}
