//! What the client's cluster tests share: a real cluster of the built `conclave` binary, the
//! connect options they use, and how long to wait for anything expected.

use std::time::Duration;

use conclave_client::ConnectOptions;
use conclave_testkit::{Cluster, locate_binary};

/// How long any single expected thing may take before a test gives up.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Starts an `nodes`-member cluster and waits for a leader.
pub async fn cluster(nodes: usize) -> Cluster {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    Cluster::start(&bin, nodes)
        .await
        .expect("cluster starts and elects a leader")
}

/// Short dial timeout, etcd-like request timeout.
pub fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_dial_timeout(Duration::from_secs(1))
        .with_request_timeout(Duration::from_secs(5))
}
