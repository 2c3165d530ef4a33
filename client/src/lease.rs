//! Leases: grant, revoke, time-to-live, list, and a keep-alive that reports loss at once.
//!
//! Contract: grant and revoke are writes (never sent twice unless the first attempt provably did
//! not leave this process; an ambiguous failure is [`Error::Unknown`]); time-to-live and the lease
//! list are reads and fail over. A [`KeepAlive`] owns a background task that renews its lease every
//! TTL/3 over a LeaseKeepAlive stream. After a failed renewal the next one goes to every endpoint
//! at once (renewing is idempotent) and the first answer wins, so one member that does not answer
//! after another cannot use up the TTL; the winner's stream is kept. This goes on until the lease
//! is known lost: the server answers that it does not exist (TTL <= 0),
//! or its local deadline passes without a renewal. The deadline is the send time of the last
//! acknowledged renewal plus the TTL it returned, so it never runs later than the server's. Loss is
//! published the moment it is known ([`KeepAlive::lost`]). Dropping the handle stops the task
//! without revoking the lease, which then expires on the server after its TTL.

use std::time::Duration;

use conclave_proto::etcdserverpb::lease_client::LeaseClient;
use conclave_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::Channel;

use crate::client::{Client, Connection, MAX_RESPONSE_BYTES, Retry};
use crate::error::{Disposition, Error, classify_stream};
use crate::stream::{BidiStream, Broken};

/// The shortest wait for one keep-alive answer before the stream is given up.
const MIN_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(1);

/// The keep-alive stream of one lease.
type KeepAliveStream = BidiStream<LeaseKeepAliveRequest, LeaseKeepAliveResponse>;

fn lease_client(channel: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// Lease operations of a [`Client`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Lease {
    client: Client,
}

impl Lease {
    pub(crate) fn new(client: Client) -> Self {
        Lease { client }
    }

    /// LeaseGrant: creates a lease of `ttl_secs` seconds, with ID `id` or (with `None`) one the
    /// server picks. The granted TTL (`ttl` in the answer) may be longer than asked. Not retried
    /// once sent.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), conclave_client::Error> {
    /// # let client = conclave_client::Client::connect(
    /// #     ["127.0.0.1:2379"],
    /// #     conclave_client::ConnectOptions::new(),
    /// # )
    /// # .await?;
    /// use conclave_client::PutOptions;
    ///
    /// // A key that disappears 10 s after the lease stops being renewed.
    /// let lease = client.lease().grant(10, None).await?;
    /// client
    ///     .kv()
    ///     .put("workers/w1", "up", PutOptions::new().with_lease(lease.id))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn grant(&self, ttl_secs: i64, id: Option<i64>) -> Result<LeaseGrantResponse, Error> {
        let request = LeaseGrantRequest {
            ttl: ttl_secs,
            id: id.unwrap_or(0),
        };
        self.client
            .call(
                Retry::OnlyIfNotSent,
                request,
                |channel, request| async move { lease_client(channel).lease_grant(request).await },
            )
            .await
    }

    /// LeaseRevoke: deletes lease `id` and every key attached to it. Not retried once sent; a
    /// lease that does not exist gives [`Error::LeaseNotFound`].
    pub async fn revoke(&self, id: i64) -> Result<LeaseRevokeResponse, Error> {
        self.client
            .call(
                Retry::OnlyIfNotSent,
                LeaseRevokeRequest { id },
                |channel, request| async move { lease_client(channel).lease_revoke(request).await },
            )
            .await
    }

    /// LeaseTimeToLive: the remaining (`ttl`) and granted (`granted_ttl`) TTL of lease `id`, in
    /// seconds, and with `keys` the keys attached to it. A lease that does not exist answers
    /// `ttl == -1`. Retried on other endpoints like a read.
    pub async fn time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, Error> {
        self.client
            .call(
                Retry::Safe,
                LeaseTimeToLiveRequest { id, keys },
                |channel, request| async move {
                    lease_client(channel).lease_time_to_live(request).await
                },
            )
            .await
    }

    /// LeaseLeases: the IDs of every live lease. Retried on other endpoints like a read.
    pub async fn leases(&self) -> Result<LeaseLeasesResponse, Error> {
        self.client
            .call(
                Retry::Safe,
                LeaseLeasesRequest {},
                |channel, request| async move { lease_client(channel).lease_leases(request).await },
            )
            .await
    }

    /// Starts keeping lease `id` alive. Returns once the first renewal is acknowledged (failing
    /// over like a read within the client's request timeout), so [`KeepAlive::ttl`] and
    /// [`KeepAlive::deadline`] are known; a lease that does not exist gives
    /// [`Error::LeaseNotFound`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), conclave_client::Error> {
    /// # let client = conclave_client::Client::connect(
    /// #     ["127.0.0.1:2379"],
    /// #     conclave_client::ConnectOptions::new(),
    /// # )
    /// # .await?;
    /// let lease = client.lease();
    /// let id = lease.grant(10, None).await?.id;
    /// let keep_alive = lease.keep_alive(id).await?;
    /// // Resolves only once the lease is gone (revoked elsewhere, or not renewed in time).
    /// let loss = keep_alive.lost().await;
    /// eprintln!("lease {id:x} lost: {loss:?}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn keep_alive(&self, id: i64) -> Result<KeepAlive, Error> {
        let options = self.client.options();
        let timeout = options.request_timeout();
        let deadline = Instant::now() + timeout;
        let mut session = None;
        let mut attempt: u32 = 0;
        loop {
            let index = self.client.current_index();
            let renewal =
                tokio::time::timeout_at(deadline, renew(&self.client, id, &mut session, timeout))
                    .await;
            let broken = match renewal {
                Err(_elapsed) => {
                    self.client.rotate_from(index);
                    return Err(Error::Timeout(timeout));
                }
                Ok(Renewal::NotFound) => return Err(Error::LeaseNotFound),
                Ok(Renewal::Renewed { sent_at, ttl }) => {
                    let (state, receiver) = watch::channel(KeepAliveState {
                        ttl,
                        deadline: sent_at + ttl_duration(ttl),
                        lost: None,
                    });
                    let task = tokio::spawn(keep_alive_task(
                        self.client.clone(),
                        id,
                        session,
                        state,
                        sent_at + renew_interval(ttl),
                    ));
                    return Ok(KeepAlive {
                        id,
                        state: receiver,
                        task,
                    });
                }
                Ok(Renewal::Failed(broken)) => broken,
            };
            let status = match classify_stream(broken.status, &broken.url) {
                Disposition::Fail(err) => return Err(err),
                Disposition::Retry(status) => status,
            };
            tracing::debug!(endpoint = %broken.url, attempt, %status, "keep-alive not established; trying the next endpoint");
            self.client.rotate_from(broken.index);
            attempt += 1;
            let pause = options.backoff(attempt - 1);
            if attempt as usize >= options.max_attempts() || Instant::now() + pause >= deadline {
                return Err(Error::Unavailable {
                    endpoint: broken.url,
                    source: status,
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// Why a kept-alive lease was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseLoss {
    /// The server answered that the lease does not exist: it was revoked or has expired there.
    NotFound,
    /// The local deadline (last acknowledged renewal + TTL) passed without a renewal: the lease
    /// must be assumed expired.
    Expired,
}

/// What the keep-alive task publishes.
#[derive(Clone, Copy, Debug)]
struct KeepAliveState {
    ttl: i64,
    deadline: Instant,
    lost: Option<LeaseLoss>,
}

/// A lease being kept alive by a background task. Dropping it stops the task; the lease is not
/// revoked and expires on the server after its TTL.
#[derive(Debug)]
pub struct KeepAlive {
    id: i64,
    state: watch::Receiver<KeepAliveState>,
    task: JoinHandle<()>,
}

impl KeepAlive {
    /// The lease ID.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL in seconds returned by the last acknowledged renewal.
    pub fn ttl(&self) -> i64 {
        self.state.borrow().ttl
    }

    /// When the lease must be assumed expired unless renewed: the send time of the last
    /// acknowledged renewal plus its TTL.
    pub fn deadline(&self) -> Instant {
        self.state.borrow().deadline
    }

    /// Whether (and why) the lease is known lost, without waiting.
    pub fn loss(&self) -> Option<LeaseLoss> {
        self.state.borrow().lost
    }

    /// Resolves as soon as the lease is known lost (at once if it already is). Never resolves
    /// while the lease is being renewed. Cancel-safe; may be awaited by several callers.
    pub async fn lost(&self) -> LeaseLoss {
        let mut state = self.state.clone();
        let outcome = state
            .wait_for(|s| s.lost.is_some())
            .await
            .map(|s| (s.lost, s.deadline));
        match outcome {
            Ok((Some(loss), _)) => loss,
            // The task ended without reporting (it panicked): nobody renews the lease any more,
            // so it is lost once its deadline passes.
            Ok((None, deadline)) => {
                tokio::time::sleep_until(deadline).await;
                LeaseLoss::Expired
            }
            Err(_) => {
                tokio::time::sleep_until(self.deadline()).await;
                LeaseLoss::Expired
            }
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The outcome of one renewal.
#[derive(Debug)]
enum Renewal {
    /// Acknowledged: the request was sent at `sent_at` and the lease now has `ttl` seconds.
    Renewed { sent_at: Instant, ttl: i64 },
    /// The server says the lease does not exist.
    NotFound,
    /// The stream failed; it has been dropped.
    Failed(Broken),
}

/// A TTL in seconds as a duration (0 for a non-positive TTL).
fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

/// Time between renewals: a third of the TTL, as etcd's client does.
fn renew_interval(ttl: i64) -> Duration {
    ttl_duration(ttl) / 3
}

/// How long one renewal may wait for its answer before the stream is given up: a third of the TTL
/// (at least [`MIN_EXCHANGE_TIMEOUT`]), never more than the request timeout, so a stalled member
/// is left while there is still time to renew elsewhere.
fn exchange_timeout(request_timeout: Duration, ttl: i64) -> Duration {
    request_timeout.min(renew_interval(ttl).max(MIN_EXCHANGE_TIMEOUT))
}

/// Sends one renewal for lease `id` and waits up to `limit` for its answer, opening a stream on
/// the current endpoint first if there is none. On failure the stream is dropped.
async fn renew(
    client: &Client,
    id: i64,
    session: &mut Option<KeepAliveStream>,
    limit: Duration,
) -> Renewal {
    let connection = session.is_none().then(|| client.current_connection());
    renew_via(connection, id, session, limit).await
}

/// Sends one renewal on a new stream to every endpoint at once and returns the first definite
/// answer (renewed, or not found) with the stream that gave it; the other streams are dropped.
/// When no endpoint answers, the last failure.
async fn renew_everywhere(
    client: &Client,
    id: i64,
    limit: Duration,
) -> (Renewal, Option<KeepAliveStream>) {
    let mut attempts = tokio::task::JoinSet::new();
    for connection in client.connections() {
        attempts.spawn(async move {
            let mut session = None;
            let renewal = renew_via(Some(connection), id, &mut session, limit).await;
            (renewal, session)
        });
    }
    let mut last = (
        Renewal::Failed(Broken {
            index: client.current_index(),
            url: client.current_endpoint(),
            status: Status::unavailable("no endpoint answered the keep-alive"),
        }),
        None,
    );
    while let Some(joined) = attempts.join_next().await {
        match joined {
            Ok((renewal @ (Renewal::Renewed { .. } | Renewal::NotFound), session)) => {
                return (renewal, session);
            }
            Ok(failed) => last = failed,
            Err(e) => tracing::debug!(error = %e, "a hedged keep-alive attempt ended abnormally"),
        }
    }
    last
}

/// [`renew`] on `connection` when there is no stream yet.
async fn renew_via(
    connection: Option<Connection>,
    id: i64,
    session: &mut Option<KeepAliveStream>,
    limit: Duration,
) -> Renewal {
    let sent_at = Instant::now();
    // Where the request goes: the open stream's endpoint, or `connection` for a new stream.
    let (index, url) = match (session.as_ref(), connection.as_ref()) {
        (Some(stream), _) => (stream.index(), stream.url().to_owned()),
        (None, Some(connection)) => (connection.index, connection.url.clone()),
        (None, None) => (0, String::new()),
    };
    let result = match tokio::time::timeout(limit, exchange(connection, id, session)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(Status::deadline_exceeded(format!(
            "no keep-alive answer within {limit:?}"
        ))),
    };
    match result {
        Ok(response) if response.ttl <= 0 => Renewal::NotFound,
        Ok(response) => Renewal::Renewed {
            sent_at,
            ttl: response.ttl,
        },
        Err(status) => {
            *session = None;
            if status.message() == "etcdserver: requested lease not found" {
                Renewal::NotFound
            } else {
                Renewal::Failed(Broken { index, url, status })
            }
        }
    }
}

/// One request and its answer on the session's stream, or on a new stream opened on
/// `connection` when there is none.
async fn exchange(
    connection: Option<Connection>,
    id: i64,
    session: &mut Option<KeepAliveStream>,
) -> Result<LeaseKeepAliveResponse, Status> {
    let request = LeaseKeepAliveRequest { id };
    if let Some(stream) = session.as_ref() {
        stream.send(request)?;
    } else {
        let Some(connection) = connection else {
            return Err(Status::internal("no endpoint for the keep-alive stream"));
        };
        let opened = BidiStream::open(connection, request, |channel, outbound| async move {
            lease_client(channel).lease_keep_alive(outbound).await
        })
        .await
        .map_err(|broken| broken.status)?;
        *session = Some(opened);
    }
    let Some(stream) = session.as_mut() else {
        return Err(Status::internal("keep-alive stream missing"));
    };
    match stream.message().await? {
        Some(response) => Ok(response),
        None => Err(Status::unavailable("keep-alive stream ended by the server")),
    }
}

/// The keep-alive task: renews every TTL/3; after a failure renews on every endpoint at once
/// (with backoff while nothing answers); publishes the loss of the lease (then stops) as soon as it
/// is known.
async fn keep_alive_task(
    client: Client,
    id: i64,
    mut session: Option<KeepAliveStream>,
    state: watch::Sender<KeepAliveState>,
    mut next_send: Instant,
) {
    let request_timeout = client.options().request_timeout();
    let mut failures: u32 = 0;
    loop {
        let KeepAliveState { ttl, deadline, .. } = *state.borrow();
        let limit = exchange_timeout(request_timeout, ttl);
        let renewal = tokio::time::timeout_at(deadline, async {
            tokio::time::sleep_until(next_send).await;
            if failures == 0 {
                renew(&client, id, &mut session, limit).await
            } else {
                let (renewal, winner) = renew_everywhere(&client, id, limit).await;
                session = winner;
                renewal
            }
        })
        .await;
        match renewal {
            Err(_elapsed) => {
                tracing::debug!(lease = id, "lease deadline passed without a renewal");
                state.send_modify(|s| s.lost = Some(LeaseLoss::Expired));
                return;
            }
            Ok(Renewal::NotFound) => {
                tracing::debug!(lease = id, "lease not found by the server");
                state.send_modify(|s| s.lost = Some(LeaseLoss::NotFound));
                return;
            }
            Ok(Renewal::Renewed { sent_at, ttl }) => {
                failures = 0;
                state.send_modify(|s| {
                    s.ttl = ttl;
                    s.deadline = sent_at + ttl_duration(ttl);
                });
                next_send = sent_at + renew_interval(ttl);
            }
            Ok(Renewal::Failed(broken)) => {
                tracing::debug!(lease = id, endpoint = %broken.url, status = %broken.status, "keep-alive failed; trying every endpoint");
                client.rotate_from(broken.index);
                next_send = Instant::now() + client.options().backoff(failures);
                failures = failures.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_every_third_of_the_ttl() {
        assert_eq!(renew_interval(3), Duration::from_secs(1));
        assert_eq!(renew_interval(60), Duration::from_secs(20));
        assert_eq!(renew_interval(0), Duration::ZERO);
        assert_eq!(renew_interval(-1), Duration::ZERO);
        assert_eq!(ttl_duration(-5), Duration::ZERO);
        assert_eq!(ttl_duration(7), Duration::from_secs(7));
    }

    #[test]
    fn exchange_timeout_is_bounded_both_ways() {
        let request = Duration::from_secs(5);
        assert_eq!(exchange_timeout(request, 3), MIN_EXCHANGE_TIMEOUT);
        assert_eq!(exchange_timeout(request, 9), Duration::from_secs(3));
        assert_eq!(exchange_timeout(request, 600), request);
        assert_eq!(
            exchange_timeout(Duration::from_millis(300), 1),
            Duration::from_millis(300)
        );
    }

    #[tokio::test]
    async fn lost_resolves_at_once_when_already_lost() {
        let (state, receiver) = watch::channel(KeepAliveState {
            ttl: 5,
            deadline: Instant::now() + Duration::from_secs(3600),
            lost: None,
        });
        let keep_alive = KeepAlive {
            id: 1,
            state: receiver,
            task: tokio::spawn(async {}),
        };
        assert_eq!(keep_alive.loss(), None);
        state.send_modify(|s| s.lost = Some(LeaseLoss::NotFound));
        assert_eq!(keep_alive.lost().await, LeaseLoss::NotFound);
        assert_eq!(keep_alive.loss(), Some(LeaseLoss::NotFound));
        assert_eq!(keep_alive.id(), 1);
        assert_eq!(keep_alive.ttl(), 5);
    }

    #[tokio::test]
    async fn a_vanished_task_means_loss_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(50);
        let (state, receiver) = watch::channel(KeepAliveState {
            ttl: 1,
            deadline,
            lost: None,
        });
        drop(state);
        let keep_alive = KeepAlive {
            id: 1,
            state: receiver,
            task: tokio::spawn(async {}),
        };
        assert_eq!(keep_alive.lost().await, LeaseLoss::Expired);
        assert!(Instant::now() >= deadline);
    }
}
