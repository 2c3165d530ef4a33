//! Integration tests against real `conclave` processes started by the shared test kit. One test
//! binary (to keep link time down), one module per area, named by priority like openraft's suites.

mod t10_kv_single_member;
mod t20_replication;
mod t30_crash_recovery;
mod t40_watch;
mod t50_lease;
mod t60_membership;
mod t70_backup;
mod t75_alarms;
mod t80_http;
mod t90_regressions;

use std::path::Path;

use conclave_testkit::Cluster;

/// The binary under test, built by cargo for this package's integration tests.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_conclave"))
}

/// Starts an `n`-member cluster and waits for a leader.
pub async fn cluster(n: usize) -> Cluster {
    Cluster::start(binary(), n)
        .await
        .expect("cluster starts and elects a leader")
}
