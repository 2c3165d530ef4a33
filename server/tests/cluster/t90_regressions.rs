//! Regression tests, one per bug found, each named after it.

use std::time::Duration;

use conclave_client::{GetOptions, PutOptions};
use conclave_testkit::NodeState;

use super::cluster;

/// Bug: the raft task started the next ReadIndex round between `ready()` and `advance_append()`.
/// On a follower that queues a message to the leader, and raft-rs panics ("not leader but has new
/// msg after advance"); the panic killed only the raft thread, leaving a member that accepted
/// requests and answered every one with "server stopped". Fixed by starting rounds after advance,
/// and by turning a panic of the raft or apply thread into a stop of the member.
#[tokio::test]
async fn follower_read_rounds_started_between_ready_and_advance() {
    let c = cluster(3).await;
    let leader = c.leader_index().await.unwrap();
    c.client(leader)
        .await
        .unwrap()
        .kv()
        .put("k", "v", PutOptions::new())
        .await
        .unwrap();
    let mut readers = Vec::new();
    for member in (0..3).filter(|&m| m != leader) {
        for _ in 0..32 {
            let kv = c.client(member).await.unwrap().kv();
            readers.push(tokio::spawn(async move {
                for _ in 0..100 {
                    let got = kv
                        .get("k", GetOptions::new())
                        .await
                        .expect("linearizable read");
                    assert_eq!(got.kvs.len(), 1);
                }
            }));
        }
    }
    for r in readers {
        tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("reads finish")
            .expect("every read succeeds");
    }
    for m in 0..3 {
        assert_eq!(
            c.state(m).unwrap(),
            NodeState::Running,
            "member {m} is alive"
        );
    }
}
