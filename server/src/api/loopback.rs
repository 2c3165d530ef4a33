//! A client connected to this member's own client URL. The lock and election services run the
//! client recipes (`conclave_client::Mutex`, `Election`) through it, as etcd's services run its
//! `concurrency` package, so a lock or a campaign through the service and one by a client recipe on
//! the same name see each other.

use conclave_client::{Client, ConnectOptions};
use tokio::sync::OnceCell;
use tonic::Status;

use super::status::from_client;

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

    /// The client, connecting it first if needed (the server is listening by then).
    pub async fn client(&self) -> Result<&Client, Status> {
        self.client
            .get_or_try_init(|| Client::connect([self.endpoint.as_str()], ConnectOptions::new()))
            .await
            .map_err(from_client)
    }
}
