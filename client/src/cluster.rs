//! Cluster membership calls: the member list (a read, failed over like one) and membership
//! changes (add, remove, update, promote), which are writes: retried on another endpoint only
//! when the attempt provably never reached a server, because a change is not idempotent.

use conclave_proto::etcdserverpb::cluster_client::ClusterClient;
use conclave_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};

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

    /// Adds a member reachable at `peer_urls` (a voter, or a learner that replicates without
    /// voting). The response carries its new id; then start the member with
    /// `--initial-cluster-state existing`.
    pub async fn member_add(
        &self,
        peer_urls: impl IntoIterator<Item = impl Into<String>>,
        is_learner: bool,
    ) -> Result<MemberAddResponse, Error> {
        let request = MemberAddRequest {
            peer_ur_ls: peer_urls.into_iter().map(Into::into).collect(),
            is_learner,
        };
        self.client
            .call(Retry::OnlyIfNotSent, request, |channel, request| async move {
                ClusterClient::new(channel).member_add(request).await
            })
            .await
    }

    /// Removes member `id` (removing the leader moves leadership first). The removed member
    /// stops itself.
    pub async fn member_remove(&self, id: u64) -> Result<MemberRemoveResponse, Error> {
        self.client
            .call(
                Retry::OnlyIfNotSent,
                MemberRemoveRequest { id },
                |channel, request| async move {
                    ClusterClient::new(channel).member_remove(request).await
                },
            )
            .await
    }

    /// Changes where member `id` is reached by its peers.
    pub async fn member_update(
        &self,
        id: u64,
        peer_urls: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<MemberUpdateResponse, Error> {
        let request = MemberUpdateRequest {
            id,
            peer_ur_ls: peer_urls.into_iter().map(Into::into).collect(),
        };
        self.client
            .call(
                Retry::OnlyIfNotSent,
                request,
                |channel, request| async move {
                    ClusterClient::new(channel).member_update(request).await
                },
            )
            .await
    }

    /// Makes learner `id` a voter. Refused (`LearnerNotReady`) until it has caught up with the
    /// leader.
    pub async fn member_promote(&self, id: u64) -> Result<MemberPromoteResponse, Error> {
        self.client
            .call(
                Retry::OnlyIfNotSent,
                MemberPromoteRequest { id },
                |channel, request| async move {
                    ClusterClient::new(channel).member_promote(request).await
                },
            )
            .await
    }
}
