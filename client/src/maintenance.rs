//! Maintenance calls. `status` asks one member about itself (leader, raft indexes, db size); with
//! no endpoint named it fails over like any read. `hash_kv` and `hash` fingerprint a member's state
//! (equal on every member at the same revision). `snapshot` streams a backup from the first member
//! that answers, without a deadline (a backup of a large database takes long). `defragment_on`
//! compacts one member's database file (the member keeps serving). `move_leader` is the only call
//! that changes cluster state: it finds the leader among the endpoints and asks it to hand over.

use conclave_proto::etcdserverpb::alarm_request::AlarmAction;
use conclave_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use conclave_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
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

    /// The raised alarms (NOSPACE, CORRUPT), by member.
    pub async fn alarm_list(&self) -> Result<AlarmResponse, Error> {
        let request = AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        };
        self.client
            .call(Retry::Safe, request, |channel, request| async move {
                MaintenanceClient::new(channel).alarm(request).await
            })
            .await
    }

    /// Clears every raised alarm, as `etcdctl alarm disarm`; returns those it cleared.
    pub async fn alarm_disarm(&self) -> Result<Vec<AlarmMember>, Error> {
        let raised = self.alarm_list().await?.alarms;
        for a in &raised {
            let request = AlarmRequest {
                action: AlarmAction::Deactivate as i32,
                member_id: a.member_id,
                alarm: a.alarm,
            };
            self.client
                .call(Retry::Safe, request, |channel, request| async move {
                    MaintenanceClient::new(channel).alarm(request).await
                })
                .await?;
        }
        Ok(raised)
    }

    /// The crc32 of the MVCC history up to `revision` (0: the newest) on the member at
    /// `endpoint`, with its compaction point.
    pub async fn hash_kv_on(&self, endpoint: &str, revision: i64) -> Result<HashKvResponse, Error> {
        self.client
            .call_on(
                endpoint,
                Retry::Safe,
                HashKvRequest { revision },
                |channel, request| async move {
                    MaintenanceClient::new(channel).hash_kv(request).await
                },
            )
            .await
    }

    /// Defragments the database of the member at `endpoint` (within the request timeout: give a
    /// large database a long one).
    pub async fn defragment_on(&self, endpoint: &str) -> Result<DefragmentResponse, Error> {
        self.client
            .call_on(
                endpoint,
                Retry::Safe,
                DefragmentRequest {},
                |channel, request| async move {
                    MaintenanceClient::new(channel).defragment(request).await
                },
            )
            .await
    }

    /// The crc32 of the whole state of the member at `endpoint`.
    pub async fn hash_on(&self, endpoint: &str) -> Result<HashResponse, Error> {
        self.client
            .call_on(endpoint, Retry::Safe, HashRequest {}, |channel, request| async move {
                MaintenanceClient::new(channel).hash(request).await
            })
            .await
    }

    /// A backup of one member's state, as a stream of chunks (`remaining_bytes` counts down to
    /// 0). Tries each endpoint until one starts streaming; the stream itself has no deadline.
    pub async fn snapshot(&self) -> Result<tonic::Streaming<SnapshotResponse>, Error> {
        let mut last = Error::NoEndpoints;
        for c in self.client.connections() {
            match MaintenanceClient::new(c.channel)
                .max_decoding_message_size(usize::MAX)
                .snapshot(SnapshotRequest {})
                .await
            {
                Ok(stream) => return Ok(stream.into_inner()),
                Err(status) => {
                    last = Error::Unavailable {
                        endpoint: c.url,
                        source: status,
                    }
                }
            }
        }
        Err(last)
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
