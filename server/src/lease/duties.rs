//! The leader's lease duties, run on every member but active only while it leads: follow raft
//! leadership (promote / demote the lessor), propose revokes for expired leases in bounded
//! batches (etcd revokes at most 1000 leases per second, so does this), and propose checkpoints
//! of remaining TTLs. Both are proposed as the leader of the term the lessor was promoted in
//! ([`Node::propose_as_leader`]): decided on this member's clock, they must not take effect once
//! another member leads.

use std::sync::Arc;
use std::time::Duration;

use conclave_proto::conclave::internal::v1::raft_command::Op;
use conclave_proto::etcdserverpb::{LeaseCheckpointRequest, LeaseRevokeRequest};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Lessor;
use crate::error::ServerError;
use crate::node::Node;

/// How often the duties run.
pub const DUTY_TICK: Duration = Duration::from_millis(250);
/// Expired leases revoked per second at most.
const REVOKES_PER_SECOND: usize = 1000;
/// Checkpoints carried by one raft entry at most.
const CHECKPOINTS_PER_ENTRY: usize = 1000;

/// Settings of the duties.
#[derive(Debug, Clone, Copy)]
pub struct DutySettings {
    /// Grace every lease gets when a member becomes leader (the election timeout).
    pub extend: Duration,
    /// A lease's remaining TTL is recorded once it drifted this far from the stored one.
    pub checkpoint_interval: Duration,
    /// Largest raft command (--max-request-bytes).
    pub max_request_bytes: usize,
}

/// Runs the duties until `stop` turns true.
pub async fn run(
    lessor: Arc<Lessor>,
    node: Arc<Node>,
    settings: DutySettings,
    mut stop: watch::Receiver<bool>,
) {
    // Only leadership changes wake the duties, not every commit.
    let mut leadership = node.leadership_watch();
    let mut ticker = tokio::time::interval(DUTY_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_tick = (REVOKES_PER_SECOND as u128 * DUTY_TICK.as_millis() / 1000).max(1) as usize;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = leadership.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
        let leading = *leadership.borrow_and_update();
        let now = Instant::now();
        if leading != lessor.primary_term() {
            match leading {
                Some(term) => {
                    tracing::info!(
                        leases = lessor.len(),
                        term,
                        "leading: tracking lease expiry"
                    );
                    lessor.promote(now, settings.extend, term);
                }
                None => lessor.demote(),
            }
        }
        let Some(term) = leading else {
            continue;
        };
        for id in lessor.take_expired(now, per_tick) {
            let node = node.clone();
            let max = settings.max_request_bytes;
            tokio::spawn(async move {
                let op = Op::LeaseRevoke(LeaseRevokeRequest { id });
                match node.propose_as_leader(op, term, max).await {
                    Ok(_) | Err(ServerError::LeaseNotFound) => {
                        tracing::debug!(lease = format!("{id:x}"), "expired lease revoked")
                    }
                    // Proposed again after the retry pause while this member leads.
                    Err(e) => tracing::debug!(error = %e, "revoking an expired lease"),
                }
            });
        }
        let checkpoints =
            lessor.take_checkpoints(now, settings.checkpoint_interval, CHECKPOINTS_PER_ENTRY);
        if !checkpoints.is_empty() {
            let node = node.clone();
            let lessor = lessor.clone();
            let max = settings.max_request_bytes;
            tokio::spawn(async move {
                let ids: Vec<i64> = checkpoints.iter().map(|c| c.id).collect();
                let op = Op::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints });
                if let Err(e) = node.propose_as_leader(op, term, max).await {
                    tracing::debug!(error = %e, "checkpointing lease TTLs");
                }
                lessor.checkpoints_done(ids);
            });
        }
    }
}
