//! The one way harness workers connect: a client over every member, preferring member `first`
//! (so workers spread over the members), with short timeouts so faults surface as unknown
//! outcomes quickly instead of stalling a worker.

use std::time::Duration;

use conclave_client::{Client, ConnectOptions};

/// A client over `endpoints`, trying `endpoints[first % len]` first.
pub async fn client(endpoints: &[String], first: usize) -> anyhow::Result<Client> {
    let mut eps = endpoints.to_vec();
    eps.rotate_left(first % endpoints.len().max(1));
    let options = ConnectOptions::new()
        .with_request_timeout(Duration::from_secs(2))
        .with_dial_timeout(Duration::from_secs(1));
    Ok(Client::connect(eps, options).await?)
}
