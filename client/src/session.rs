//! Sessions: a lease kept alive in the background for as long as its owner lives, whose loss is
//! observable. The building block of service registration (and, later, locks and elections).
//!
//! Contract: [`Session::new`] grants a lease (or adopts an existing one, see
//! [`SessionOptions::with_lease`]) and returns once its first renewal has been acknowledged; from
//! then on a [`KeepAlive`] renews it every TTL/3, failing over between endpoints. The session is
//! lost when the server answers that the lease does not exist (revoked by someone else, or
//! expired) or when the local deadline (last acknowledged renewal + TTL) passes without a renewal;
//! [`Session::lost`] resolves at that moment. A lost session stays lost and refuses further puts: a
//! new session is needed. [`Session::close`] stops the renewals and revokes the lease, which deletes
//! every key attached to it in one revision. Dropping a session only stops the renewals: the lease
//! is not revoked and expires on the server after its TTL, exactly as if the process had crashed.

use conclave_proto::etcdserverpb::PutResponse;

use crate::client::Client;
use crate::error::Error;
use crate::kv::PutOptions;
use crate::lease::{KeepAlive, LeaseLoss};

/// The TTL of a session when none is given, in seconds (etcd's `concurrency` default).
const DEFAULT_TTL_SECS: i64 = 60;

/// How a [`Session`] gets its lease.
///
/// Default: a new lease of 60 seconds.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    ttl_secs: i64,
    lease: Option<i64>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            ttl_secs: DEFAULT_TTL_SECS,
            lease: None,
        }
    }
}

impl SessionOptions {
    /// A session on a new lease of `ttl_secs` seconds. The server may grant a longer TTL (it
    /// raises TTLs below its minimum); [`Session::ttl`] tells what was granted.
    pub fn new(ttl_secs: i64) -> Self {
        SessionOptions {
            ttl_secs,
            lease: None,
        }
    }

    /// Keep the existing lease `id` alive instead of granting a new one (the TTL given to
    /// [`SessionOptions::new`] is then ignored: the lease keeps its own). Closing the session
    /// revokes that lease.
    pub fn with_lease(mut self, id: i64) -> Self {
        self.lease = Some(id);
        self
    }
}

/// A lease kept alive in the background, with keys attached to it.
///
/// Keys put through [`Session::put`] live exactly as long as the session: they are deleted when it
/// is closed, when its lease is revoked by someone else, or (after a crash, a network partition
/// longer than the TTL, or a drop) when the lease expires on the server.
///
/// Dropping a session stops the keep-alive without revoking the lease. Revoking takes a round trip
/// to the cluster, which `Drop` cannot wait for, and a revoke fired off in the background would be a
/// write whose outcome nobody learns (and which may never run if the runtime is shutting down).
/// Instead the lease expires by its TTL, as it would if the process had died: the keys outlive the
/// session by at most one TTL. Call [`Session::close`] to remove them at once.
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
/// // Register this instance for as long as the process is alive and connected.
/// let session = client.session(10).await?;
/// session.put("services/api/instance-1", "10.0.0.7:8080").await?;
/// let lost = tokio::select! {
///     loss = session.lost() => Some(loss),
///     _ = tokio::signal::ctrl_c() => None,
/// };
/// match lost {
///     // The key is gone: the lease was revoked elsewhere or expired.
///     Some(loss) => eprintln!("registration lost: {loss:?}"),
///     // Deregister at once instead of waiting for the TTL.
///     None => session.close().await?,
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Session {
    client: Client,
    keep_alive: KeepAlive,
}

impl Session {
    /// Starts a session: grants its lease (a write: not retried once sent, so an ambiguous grant
    /// gives [`Error::Unknown`] and a lease that may exist expires after its TTL) unless
    /// [`SessionOptions::with_lease`] named one, then starts keeping it alive and returns once the
    /// first renewal was acknowledged. If the keep-alive cannot be started, a lease granted here is
    /// revoked (best effort) and the keep-alive's error is returned; an adopted lease that does not
    /// exist gives [`Error::LeaseNotFound`].
    pub async fn new(client: &Client, options: SessionOptions) -> Result<Session, Error> {
        let lease = client.lease();
        let (id, granted_here) = match options.lease {
            Some(id) => (id, false),
            None => (lease.grant(options.ttl_secs, None).await?.id, true),
        };
        match lease.keep_alive(id).await {
            Ok(keep_alive) => Ok(Session {
                client: client.clone(),
                keep_alive,
            }),
            Err(err) => {
                if granted_here {
                    // Nobody will keep this lease alive. If the revoke fails too, the lease
                    // expires after its TTL.
                    if let Err(revoke) = lease.revoke(id).await {
                        tracing::debug!(lease = id, error = %revoke, "could not revoke the lease of a failed session");
                    }
                }
                Err(err)
            }
        }
    }

    /// The ID of the session's lease.
    pub fn lease_id(&self) -> i64 {
        self.keep_alive.id()
    }

    /// The TTL in seconds the server returned with the last acknowledged renewal.
    pub fn ttl(&self) -> i64 {
        self.keep_alive.ttl()
    }

    /// The client the session was started with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The keep-alive handle of the session's lease (for its deadline, for instance).
    pub fn keep_alive(&self) -> &KeepAlive {
        &self.keep_alive
    }

    /// Resolves as soon as the session is known lost (at once if it already is):
    /// [`LeaseLoss::NotFound`] when the server answered that the lease does not exist,
    /// [`LeaseLoss::Expired`] when its deadline passed without a renewal. Never resolves while the
    /// lease is being renewed. Cancel-safe; may be awaited by several callers.
    pub async fn lost(&self) -> LeaseLoss {
        self.keep_alive.lost().await
    }

    /// True once the session is known lost, without waiting.
    pub fn is_lost(&self) -> bool {
        self.keep_alive.loss().is_some()
    }

    /// Whether (and why) the session is known lost, without waiting.
    pub fn loss(&self) -> Option<LeaseLoss> {
        self.keep_alive.loss()
    }

    /// Puts `key` = `value` attached to the session's lease, so the key is deleted when the
    /// session ends. A write like [`Kv::put`](crate::Kv::put): not retried once sent. A session
    /// already known lost refuses with [`Error::LeaseNotFound`] without contacting the server.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutResponse, Error> {
        self.put_with(key, value, PutOptions::new()).await
    }

    /// [`Session::put`] with further options (`prev_kv`, for instance); the lease in `options` is
    /// replaced by the session's.
    pub async fn put_with(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: PutOptions,
    ) -> Result<PutResponse, Error> {
        if self.is_lost() {
            return Err(Error::LeaseNotFound);
        }
        self.client
            .kv()
            .put(key, value, options.with_lease(self.lease_id()))
            .await
    }

    /// Ends the session: stops the keep-alive, then revokes the lease, deleting every key attached
    /// to it. A lease that is already gone (revoked elsewhere, expired) counts as closed. Any other
    /// error means the revoke may not have happened (with [`Error::Unknown`], it may still happen);
    /// either way the lease is no longer renewed and expires after its TTL.
    pub async fn close(self) -> Result<(), Error> {
        let Session { client, keep_alive } = self;
        let id = keep_alive.id();
        drop(keep_alive);
        match client.lease().revoke(id).await {
            Ok(_) | Err(Error::LeaseNotFound) => Ok(()),
            Err(err) => Err(err),
        }
    }
}
