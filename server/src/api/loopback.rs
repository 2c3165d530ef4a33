//! A client connected to this member's own client URL. The lock and election services run the
//! client recipes (`conclave_client::Mutex`, `Election`) through it, as etcd's services run its
//! `concurrency` package, so a lock or a campaign through the service and one by a client recipe on
//! the same name see each other.

use conclave_client::{Client, ConnectOptions};
use tokio::sync::OnceCell;
use tonic::Status;

use super::status::from_client;

/// etcd's `concurrency` session TTL, for lock and campaign requests that name no lease.
const DEFAULT_SESSION_TTL: i64 = 60;

pub struct Loopback {
    endpoint: String,
    client: OnceCell<Client>,
}

impl Loopback {
    /// A client of `endpoint` (this member's client URL), connected at first use.
    pub fn new(endpoint: String) -> Self {
        Loopback {
            endpoint,
            client: OnceCell::new(),
        }
    }

    /// `lease`, or when it is 0 a new lease of etcd's default session TTL (60 s) that nobody
    /// keeps alive — what etcd's lock and election services do for a request without a lease.
    pub async fn lease_or_new(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let granted = self
            .client()
            .await?
            .lease()
            .grant(DEFAULT_SESSION_TTL, None)
            .await
            .map_err(from_client)?;
        Ok(granted.id)
    }

    /// The client, connecting it first if needed (the server is listening by then).
    pub async fn client(&self) -> Result<&Client, Status> {
        self.client
            .get_or_try_init(|| Client::connect([self.endpoint.as_str()], ConnectOptions::new()))
            .await
            .map_err(from_client)
    }
}
