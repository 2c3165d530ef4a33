//! The lease requests only the leader can answer, because only it knows expiry times: renewing a
//! lease (keep-alive) and reporting its time to live. Both first confirm leadership and catch up
//! with everything committed (a read barrier), so a lease revoked by a committed entry is never
//! renewed, and a deposed leader never acknowledges a keep-alive.
//!
//! A lease whose time ran out is answered "not found" only once its revoke is applied: the time
//! was measured on this member's clock, and a member that was paused may have been deposed while
//! its successor kept the lease alive. It is then `NotLeader`, and the request goes to the
//! successor.

use std::time::Duration;

use conclave_proto::conclave::internal::v1::raft_command::Op;
use conclave_proto::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest};
use tokio::time::Instant;

use super::{Lessor, Renewal, TimeToLive};
use crate::error::ServerError;
use crate::node::Node;

/// Confirms this member leads, and waits (until `deadline`) for its lessor to track expiry.
async fn lead(node: &Node, lessor: &Lessor, deadline: Instant) -> Result<(), ServerError> {
    node.read_barrier().await?;
    if !node.status().is_leader {
        return Err(ServerError::NotLeader);
    }
    if lessor
        .promoted(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        Ok(())
    } else if node.status().is_leader {
        Err(ServerError::Timeout)
    } else {
        Err(ServerError::NotLeader)
    }
}

/// Renews lease `id` for its full TTL; returns the TTL. A stored (or in-flight) checkpoint is
/// cleared through raft before the renewal is acknowledged, so a later leader cannot expire the
/// lease earlier than this acknowledgment promises.
pub async fn renew(
    node: &Node,
    lessor: &Lessor,
    id: i64,
    max_bytes: usize,
    timeout: Duration,
) -> Result<i64, ServerError> {
    let deadline = Instant::now() + timeout;
    lead(node, lessor, deadline).await?;
    let term = match lessor.renew(id, Instant::now())? {
        Renewal::Renewed {
            ttl,
            clear_checkpoint: false,
            ..
        } => return Ok(ttl),
        Renewal::Renewed { term, .. } => term,
        Renewal::Expired => return Err(lessor.expired_outcome(id, timeout).await),
    };
    lessor.checkpoint_settled(id, timeout).await;
    let clear = Op::LeaseCheckpoint(LeaseCheckpointRequest {
        checkpoints: vec![LeaseCheckpoint {
            id,
            remaining_ttl: 0,
        }],
    });
    node.propose_as_leader(clear, term, max_bytes).await?;
    // The acknowledgment is now: count the TTL from here.
    match lessor.renew(id, Instant::now())? {
        Renewal::Renewed { ttl, .. } => Ok(ttl),
        Renewal::Expired => Err(lessor.expired_outcome(id, timeout).await),
    }
}

/// Lease `id`'s granted and remaining TTL (and keys), or `None` if there is no such lease.
pub async fn time_to_live(
    node: &Node,
    lessor: &Lessor,
    id: i64,
    keys: bool,
    timeout: Duration,
) -> Result<Option<TimeToLive>, ServerError> {
    lead(node, lessor, Instant::now() + timeout).await?;
    Ok(lessor.time_to_live(id, Instant::now(), keys))
}
