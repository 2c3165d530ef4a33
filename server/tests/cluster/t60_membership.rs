//! Membership changes and snapshots on real clusters: learners that join by snapshot and are
//! promoted only once caught up, growing and shrinking under writes (removing the leader too),
//! replacing a member whose data is lost, and a member far behind caught up by snapshot.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use conclave_client::{Client, GetOptions, PutOptions};
use conclave_testkit::{Cluster, ClusterBuilder};

use super::{binary, poll_until};

const WAIT: Duration = Duration::from_secs(60);

/// Waits until member `index` serves (serializably) at least `count` keys under `prefix`.
async fn caught_up(c: &Cluster, index: usize, prefix: &str, count: i64) {
    let kv = c.client(index).await.unwrap().kv();
    let reached = poll_until(WAIT, Duration::from_millis(100), || async {
        kv.get(
            prefix,
            GetOptions::new()
                .with_prefix()
                .with_count_only()
                .with_serializable(),
        )
        .await
        .is_ok_and(|r| r.count >= count)
    })
    .await;
    assert!(
        reached,
        "member {index} did not catch up; log:\n{}",
        c.log_tail(index, 40).unwrap()
    );
}

/// Waits until member `index`'s log contains `text` (a log line may follow the effect it reports).
async fn log_says(c: &Cluster, index: usize, text: &str) -> bool {
    let path = c.log_path(index).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if std::fs::read_to_string(&path).unwrap().contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok()
}

async fn put_many(client: &Client, prefix: &str, range: std::ops::Range<u64>) {
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let kv = client.kv();
        let prefix = prefix.to_string();
        let range = range.clone();
        tasks.push(tokio::spawn(async move {
            for i in range.skip(t as usize).step_by(16) {
                kv.put(format!("{prefix}{i:06}"), "v", PutOptions::new())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The server's message behind a client error.
fn message(e: &conclave_client::Error) -> String {
    use conclave_client::Error;
    match e {
        Error::Status(s)
        | Error::Unavailable { source: s, .. }
        | Error::Unknown { source: s, .. } => s.message().to_string(),
        other => other.to_string(),
    }
}

/// Tries `member_promote` until it succeeds.
async fn promote(client: &Client, id: u64) {
    let promoted = tokio::time::timeout(WAIT, async {
        loop {
            match client.cluster().member_promote(id).await {
                Ok(_) => return,
                Err(e) => {
                    let m = message(&e);
                    assert!(
                        m.contains("in sync with leader") || m.contains("unhealthy"),
                        "unexpected: {m}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(promoted.is_ok(), "learner never promoted");
}

#[tokio::test]
async fn a_learner_joins_by_snapshot_votes_only_once_promoted() {
    let c = Cluster::start(binary(), 3).await.unwrap();
    let client = c.client_all().await.unwrap();
    put_many(&client, "a/", 0..500).await;

    let new = c.add_node().await.unwrap();
    let added = client
        .cluster()
        .member_add([c.peer_url(new).unwrap()], true)
        .await
        .unwrap();
    let id = added.member.as_ref().unwrap().id;
    assert!(added.member.as_ref().unwrap().is_learner);
    assert_eq!(added.members.len(), 4);

    // Not started yet: nowhere near the leader's log.
    let err = client.cluster().member_promote(id).await.unwrap_err();
    assert_eq!(
        message(&err),
        "etcdserver: can only promote a learner member which is in sync with leader"
    );
    // One learner at a time, as etcd.
    let other = c.add_node().await.unwrap();
    let err = client
        .cluster()
        .member_add([c.peer_url(other).unwrap()], true)
        .await
        .unwrap_err();
    assert_eq!(
        message(&err),
        "etcdserver: too many learner members in cluster"
    );
    // The same peer URLs twice.
    let err = client
        .cluster()
        .member_add([c.peer_url(new).unwrap()], false)
        .await
        .unwrap_err();
    assert_eq!(message(&err), "etcdserver: Peer URLs already exists");

    c.restart(new).unwrap();
    caught_up(&c, new, "a/", 500).await;
    assert!(
        log_says(&c, new, "installed snapshot").await,
        "the learner was caught up by a snapshot"
    );
    // A learner serves serializable reads only.
    let learner = c.client(new).await.unwrap();
    let err = learner
        .kv()
        .get("a/000001", GetOptions::new())
        .await
        .unwrap_err();
    assert_eq!(message(&err), "etcdserver: rpc not supported for learner");
    let err = learner
        .kv()
        .put("x", "y", PutOptions::new())
        .await
        .unwrap_err();
    assert!(message(&err).contains("not supported for learner"), "{err}");

    promote(&client, id).await;
    let list = client.cluster().member_list().await.unwrap();
    assert_eq!(list.members.len(), 4);
    assert!(list.members.iter().all(|m| !m.is_learner));
    // Now a voter: it answers linearizable reads and takes writes, and it counts for the
    // quorum. Remove one original follower and kill the other: the leader and the promoted
    // member are two of three voters, a quorum only if the promoted member votes.
    let kv = c.client(new).await.unwrap().kv();
    kv.put("after/promotion", "1", PutOptions::new())
        .await
        .unwrap();
    let leader = c.leader_index().await.unwrap();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let removed_id = c.member_id(followers[0]).await.unwrap();
    c.client(leader)
        .await
        .unwrap()
        .cluster()
        .member_remove(removed_id)
        .await
        .unwrap();
    assert!(c.wait_exit(followers[0], WAIT).await.unwrap());
    c.kill(followers[1]).unwrap();
    kv.put("after/kill", "1", PutOptions::new()).await.unwrap();
    let got = kv
        .get("a/", GetOptions::new().with_prefix().with_count_only())
        .await
        .unwrap();
    assert_eq!(got.count, 500);
}

#[tokio::test]
async fn grow_to_five_and_shrink_to_three_under_writes_loses_nothing() {
    let c = Arc::new(Cluster::start(binary(), 3).await.unwrap());
    let admin = c.client_all().await.unwrap();
    let writer = c.client_all().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let load = {
        let stop = stop.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            let kv = writer.kv();
            let mut failures = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Retried until acknowledged: clients may see retries, nothing else.
                let mut attempts = 0;
                loop {
                    match kv.put(format!("w/{i:06}"), "v", PutOptions::new()).await {
                        Ok(_) => break,
                        Err(e) => {
                            attempts += 1;
                            failures.push(e.to_string());
                            assert!(attempts < 20, "put w/{i} kept failing: {failures:?}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                acked.store(i + 1, Ordering::Relaxed);
                i += 1;
            }
            failures
        })
    };

    // Grow: two voters, one at a time, each started after it was added.
    let mut added = Vec::new();
    for _ in 0..2 {
        let index = c.add_node().await.unwrap();
        let resp = admin
            .cluster()
            .member_add([c.peer_url(index).unwrap()], false)
            .await
            .unwrap();
        c.restart(index).unwrap();
        caught_up(&c, index, "w/", acked.load(Ordering::Relaxed) as i64).await;
        added.push((index, resp.member.unwrap().id));
    }
    assert_eq!(
        admin.cluster().member_list().await.unwrap().members.len(),
        5
    );

    // Shrink: remove the leader (leadership moves first), then another original member.
    let leader = c.leader_index().await.unwrap();
    assert!(
        leader < 3,
        "a new member became leader; the test removes originals"
    );
    let leader_id = c.member_id(leader).await.unwrap();
    let resp = admin.cluster().member_remove(leader_id).await.unwrap();
    assert_eq!(resp.members.len(), 4);
    assert!(
        c.wait_exit(leader, WAIT).await.unwrap(),
        "the removed leader stops itself"
    );
    let other = (0..3).find(|i| *i != leader).unwrap();
    let other_id = c.member_id(other).await.unwrap();
    admin.cluster().member_remove(other_id).await.unwrap();
    assert!(c.wait_exit(other, WAIT).await.unwrap());

    // Writes go on in the shrunk cluster.
    let shrunk = acked.load(Ordering::Relaxed);
    let went_on = tokio::time::timeout(WAIT, async {
        while acked.load(Ordering::Relaxed) < shrunk + 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(went_on.is_ok(), "writes stopped after the shrink");
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.unwrap();
    let total = acked.load(Ordering::Relaxed);
    assert!(total > 0);
    c.wait_ready(WAIT).await.unwrap();
    let list = admin.cluster().member_list().await.unwrap();
    assert_eq!(list.members.len(), 3, "{list:?}");
    let remaining: Vec<usize> = (0..c.len())
        .filter(|i| *i != leader && *i != other)
        .collect();
    for index in remaining {
        let kv = c.client(index).await.unwrap().kv();
        let r = kv
            .get("w/", GetOptions::new().with_prefix().with_count_only())
            .await
            .unwrap();
        assert!(
            r.count as u64 >= total,
            "member {index} has {} of {total} acknowledged writes",
            r.count
        );
    }
    eprintln!(
        "{total} writes acknowledged across 2 adds and 2 removes; {} retried attempts",
        failures.len()
    );
}

#[tokio::test]
async fn a_member_whose_data_was_lost_is_replaced() {
    let c = Cluster::start(binary(), 3).await.unwrap();
    let leader = c.leader_index().await.unwrap();
    // Not through the member about to be lost: a request on a connection that breaks has an
    // unknown outcome.
    let client = c.client(leader).await.unwrap();
    put_many(&client, "r/", 0..300).await;
    let lost = (leader + 1) % 3;
    let lost_id = c.member_id(lost).await.unwrap();
    c.kill(lost).unwrap();
    std::fs::remove_dir_all(c.data_dir(lost).unwrap()).unwrap();

    client.cluster().member_remove(lost_id).await.unwrap();
    let new = c.add_node().await.unwrap();
    client
        .cluster()
        .member_add([c.peer_url(new).unwrap()], false)
        .await
        .unwrap();
    c.restart(new).unwrap();
    caught_up(&c, new, "r/", 300).await;
    put_many(&client, "r/", 300..400).await;
    // The replacement is a full voter: with the original leader gone, the two remaining
    // members (one of them new) still form a quorum of three.
    c.kill(leader).unwrap();
    let kv = c.client(new).await.unwrap().kv();
    let r = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(r) = kv
                .get("r/", GetOptions::new().with_prefix().with_count_only())
                .await
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(r.count, 400);
}

#[tokio::test]
async fn a_member_far_behind_is_caught_up_by_snapshot_and_restarts_from_it() {
    let c = ClusterBuilder::new(binary(), 3)
        .args(["--experimental-snapshot-catchup-entries", "100"])
        .start()
        .await
        .unwrap();
    let leader = c.leader_index().await.unwrap();
    let behind = (leader + 1) % 3;
    c.kill(behind).unwrap();
    let client = c.client(leader).await.unwrap();
    // Far beyond what the leader keeps for a follower (10 x 100 entries).
    put_many(&client, "s/", 0..3000).await;
    // History and leases travel with the snapshot too.
    let lease = client.lease().grant(600, None).await.unwrap().id;
    client
        .kv()
        .put("s/leased", "x", PutOptions::new().with_lease(lease))
        .await
        .unwrap();
    let first = client
        .kv()
        .put("s/000000", "second", PutOptions::new().with_prev_kv())
        .await
        .unwrap();
    let revision = first.header.unwrap().revision;

    c.restart(behind).unwrap();
    caught_up(&c, behind, "s/", 3001).await;
    assert!(
        log_says(&c, behind, "installed snapshot").await,
        "caught up by snapshot; log:\n{}",
        c.log_tail(behind, 60).unwrap()
    );

    let kv = c.client(behind).await.unwrap().kv();
    let old = kv
        .get(
            "s/000000",
            GetOptions::new()
                .with_revision(revision - 1)
                .with_serializable(),
        )
        .await
        .unwrap();
    assert_eq!(old.kvs[0].value, b"v", "history came with the snapshot");
    let ttl = c
        .client(behind)
        .await
        .unwrap()
        .lease()
        .time_to_live(lease, true)
        .await
        .unwrap();
    assert_eq!(ttl.keys, vec![b"s/leased".to_vec()]);

    // Every member restarts from its state (the one that installed the snapshot included), with
    // the same data and revision.
    for i in 0..3 {
        c.kill(i).unwrap();
    }
    for i in 0..3 {
        c.restart(i).unwrap();
    }
    c.wait_ready(WAIT).await.unwrap();
    for i in 0..3 {
        let r = c
            .client(i)
            .await
            .unwrap()
            .kv()
            .get("s/", GetOptions::new().with_prefix().with_count_only())
            .await
            .unwrap();
        assert_eq!(r.count, 3001, "member {i}");
        assert!(r.header.unwrap().revision >= revision);
    }
}
