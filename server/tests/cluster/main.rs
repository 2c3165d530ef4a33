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
mod t77_defrag;
mod t80_http;
mod t85_lock;
mod t86_election;
mod t87_groups;
mod t88_config;
mod t90_regressions;

use std::path::Path;
use std::time::Duration;

use conclave_client::Client;
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

/// Polls `check` every `every` until it returns true; false if `within` passed first.
pub async fn poll_until<F, Fut>(within: Duration, every: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(within, async {
        while !check().await {
            tokio::time::sleep(every).await;
        }
    })
    .await
    .is_ok()
}

/// Waits (up to 5 s) until `key` exists: a lock waiter or a candidate is queued once its key is
/// there, so a test can then check that it keeps waiting.
pub async fn wait_for_key(client: &Client, key: impl Into<Vec<u8>>) {
    let key = key.into();
    let found = poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async {
            let r = client
                .kv()
                .get(key.clone(), conclave_client::GetOptions::new())
                .await
                .expect("get");
            !r.kvs.is_empty()
        },
    )
    .await;
    assert!(found, "{} never appeared", String::from_utf8_lossy(&key));
}

/// HashKV of every member of `c` at `revision`, asked until each has applied it.
pub async fn hash_kv_everywhere(c: &Cluster, client: &Client, revision: i64) -> Vec<(u32, i64)> {
    let mut out = Vec::new();
    for i in 0..c.len() {
        let endpoint = c.client_endpoint(i);
        let got = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match client.maintenance().hash_kv_on(&endpoint, revision).await {
                    Ok(r) => return (r.hash, r.compact_revision),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
        .await
        .expect("every member answers HashKV");
        out.push(got);
    }
    out
}
