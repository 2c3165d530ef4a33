//! Running a request on the leader: directly when this member leads, otherwise on the leader's
//! peer URL (through a lazily connected channel per peer), retrying while leadership moves.
//! Each service says which failures are safe to retry: a lease renewal may be repeated, a
//! membership change only if it certainly never reached raft.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use super::Context;
use crate::error::ServerError;

/// Lazily connected channels to other members' peer URLs.
#[derive(Default)]
pub struct PeerChannels {
    channels: Mutex<HashMap<String, Channel>>,
}

impl PeerChannels {
    fn get(&self, url: &str) -> Result<Channel, Status> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(url) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| Status::internal(format!("conclave: bad peer URL {url}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(url.to_string(), channel.clone());
        Ok(channel)
    }
}

/// How a forwarded request is retried.
pub struct Forwarding {
    /// Pause before asking again.
    pub pause: Duration,
    /// One attempt at most (then it counts as timed out); `None`: until the request deadline.
    pub attempt: Option<Duration>,
    /// Whether a failure may be retried.
    pub retry: fn(&Status) -> bool,
}

/// Calls `here` when this member leads, otherwise `forward` with a channel to the leader's peer
/// URL; retries what `how.retry` allows, until the request timeout.
pub async fn on_leader<T, H, HF, F, FF>(
    ctx: &Context,
    peers: &PeerChannels,
    how: &Forwarding,
    here: H,
    forward: F,
) -> Result<T, Status>
where
    H: Fn() -> HF,
    HF: Future<Output = Result<T, ServerError>>,
    F: Fn(Channel) -> FF,
    FF: Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + ctx.request_timeout;
    loop {
        let status = ctx.node.status();
        let outcome = if status.is_leader {
            here().await.map_err(Status::from)
        } else if status.leader == 0 {
            Err(ServerError::NoLeader.into())
        } else {
            match ctx
                .membership
                .get(status.leader)
                .and_then(|m| m.peer_urls.first().cloned())
            {
                Some(url) => {
                    let channel = peers.get(&url)?;
                    let attempt = how
                        .attempt
                        .map_or(deadline, |a| deadline.min(Instant::now() + a));
                    match tokio::time::timeout_at(attempt, forward(channel)).await {
                        Ok(r) => r,
                        Err(_) => Err(ServerError::Timeout.into()),
                    }
                }
                None => Err(ServerError::NoLeader.into()),
            }
        };
        match outcome {
            Err(s) if (how.retry)(&s) && Instant::now() + how.pause < deadline => {
                tokio::time::sleep(how.pause).await;
            }
            other => return other,
        }
    }
}
