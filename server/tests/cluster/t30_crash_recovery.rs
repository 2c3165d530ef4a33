//! kill -9 at any time loses no acknowledged write; restarts keep data and never lower the revision.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_client::{GetOptions, PutOptions};

use super::cluster;

/// Writers put unique keys through a client that knows every member, while the leader is killed
/// with SIGKILL. Every write that was acknowledged must be readable afterwards, from every member,
/// including the old leader once restarted. Writes with an unknown outcome may or may not exist.
#[tokio::test]
async fn killing_the_leader_under_writes_loses_no_acknowledged_write() {
    let c = cluster(3).await;
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let unknown: Arc<Mutex<usize>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = c.client_all().await.unwrap();
        let acked = acked.clone();
        let unknown = unknown.clone();
        let stop = stop_rx.clone();
        writers.push(tokio::spawn(async move {
            let kv = client.kv();
            let mut seq = 0u64;
            while !*stop.borrow() {
                let key = format!("w{w}/{seq:06}");
                let value = format!("value-{w}-{seq}");
                match kv.put(key.clone(), value.clone(), PutOptions::new()).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(key, value);
                    }
                    Err(e) if e.is_unknown_outcome() => *unknown.lock().unwrap() += 1,
                    Err(_) => {} // definitely not applied
                }
                seq += 1;
            }
        }));
    }
    let wait_for = |n: usize| {
        let acked = acked.clone();
        async move {
            while acked.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait_for(200))
        .await
        .expect("writes flow before the kill");
    let old_leader = c.leader_index().await.unwrap();
    c.kill(old_leader).unwrap();
    let before_kill = acked.lock().unwrap().len();
    // A new leader is elected and writes resume.
    let new_leader = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(l) = c.leader_index().await
                && l != old_leader
            {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a new leader is elected");
    assert_ne!(new_leader, old_leader);
    tokio::time::timeout(Duration::from_secs(30), wait_for(before_kill + 200))
        .await
        .expect("writes resume under the new leader");
    stop_tx.send(true).unwrap();
    for w in writers {
        w.await.unwrap();
    }

    c.restart(old_leader).unwrap();
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    for member in 0..3 {
        let kv = c.client(member).await.unwrap().kv();
        let all = kv.get("w", GetOptions::new().with_prefix()).await.unwrap();
        let found: BTreeMap<String, String> = all
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key.clone()).unwrap(),
                    String::from_utf8(kv.value.clone()).unwrap(),
                )
            })
            .collect();
        for (k, v) in &acked {
            assert_eq!(
                found.get(k),
                Some(v),
                "member {member} lost acknowledged {k}"
            );
        }
        // Anything present beyond the acknowledged writes came from an unknown outcome.
        assert!(found.len() <= acked.len() + *unknown.lock().unwrap());
    }
}

/// Stopping every member at once (SIGKILL) and starting them again keeps every key and the
/// revision; the revision never goes backwards.
#[tokio::test]
async fn restarting_every_member_keeps_data_and_revision() {
    let c = cluster(3).await;
    let kv = c.client_all().await.unwrap().kv();
    let mut last = 0;
    for i in 0..50 {
        last = kv
            .put(format!("k{i:03}"), format!("{i}"), PutOptions::new())
            .await
            .unwrap()
            .header
            .unwrap()
            .revision;
    }
    kv.compact(last - 10, true).await.unwrap();
    for i in 0..3 {
        c.kill(i).unwrap();
    }
    for i in 0..3 {
        c.restart(i).unwrap();
    }
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    for i in 0..3 {
        let kv = c.client(i).await.unwrap().kv();
        let all = kv.get("k", GetOptions::new().with_prefix()).await.unwrap();
        assert_eq!(all.count, 50, "member {i}");
        let rev = all.header.unwrap().revision;
        assert!(
            rev >= last,
            "member {i}: revision went back from {last} to {rev}"
        );
        // The compaction point survived too.
        let err = kv
            .get("k000", GetOptions::new().with_revision(last - 20))
            .await
            .unwrap_err();
        assert!(matches!(err, conclave_client::Error::Compacted), "{err:?}");
    }
    let next = kv.put("after", "restart", PutOptions::new()).await.unwrap();
    assert_eq!(next.header.unwrap().revision, last + 1);
}

/// The log is truncated behind the applied index (`--experimental-snapshot-catchup-entries`, 1,000
/// here), but a leader keeps what a follower still needs (up to ten times that): a follower that was
/// down while more than the retention window was written catches up when it returns (from the log,
/// or by snapshot if leadership moved to a member that truncated). Every member then restarts on
/// its truncated log with all data.
#[tokio::test]
async fn follower_down_past_the_retention_window_catches_up_from_the_log() {
    let c = conclave_testkit::ClusterBuilder::new(super::binary(), 3)
        .args(["--experimental-snapshot-catchup-entries", "1000"])
        .start()
        .await
        .unwrap();
    let leader = c.leader_index().await.unwrap();
    let follower = (leader + 1) % 3;
    c.kill(follower).unwrap();
    let client = c.client(leader).await.unwrap();
    let total = 2_500u64;
    let mut tasks = Vec::new();
    for t in 0..50u64 {
        let kv = client.kv();
        tasks.push(tokio::spawn(async move {
            for i in (t..total).step_by(50) {
                kv.put(format!("r/{i:05}"), format!("{i}"), PutOptions::new())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last = client
        .kv()
        .get("r/", GetOptions::new().with_prefix().with_count_only())
        .await
        .unwrap();
    assert_eq!(last.count, total as i64);
    let revision = last.header.unwrap().revision;

    c.restart(follower).unwrap();
    let kv = c.client(follower).await.unwrap().kv();
    let caught_up = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(r) = kv
                .get(
                    "r/",
                    GetOptions::new()
                        .with_prefix()
                        .with_count_only()
                        .with_serializable(),
                )
                .await
                && r.count == total as i64
            {
                return r.header.unwrap().revision;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the returning follower catches up");
    assert!(caught_up >= revision);

    for i in 0..3 {
        c.kill(i).unwrap();
    }
    for i in 0..3 {
        c.restart(i).unwrap();
    }
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    for i in 0..3 {
        let r = c
            .client(i)
            .await
            .unwrap()
            .kv()
            .get("r/", GetOptions::new().with_prefix().with_count_only())
            .await
            .unwrap();
        assert_eq!(r.count, total as i64, "member {i} after restart");
    }
}

/// SIGTERM of the leader under writes: it hands leadership over before it stops, so writes go
/// on without waiting for an election timeout; it exits by itself, cleanly; every acknowledged
/// write is there, on every member, including the stopped one once restarted. A write forwarded
/// by a follower while leadership moves may be dropped by raft (a leader that is handing over
/// takes no proposals): the client then sees an unknown outcome, never a false failure.
#[tokio::test]
async fn sigterm_of_the_leader_hands_over_and_loses_nothing() {
    let c = Arc::new(cluster(3).await);
    let leader = c.leader_index().await.unwrap();
    let old_id = c.member_id(leader).await.unwrap();
    let client = c.client((leader + 1) % 3).await.unwrap();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let acked = acked.clone();
        let kv = client.kv();
        tokio::spawn(async move {
            let mut seq = 0u64;
            let mut unknown = 0;
            while !*stop_rx.borrow() {
                let key = format!("t/{seq:06}");
                match kv.put(key.clone(), "v", PutOptions::new()).await {
                    Ok(_) => acked.lock().unwrap().push(key),
                    Err(e) => {
                        assert!(e.is_unknown_outcome(), "put {key}: {e}");
                        unknown += 1;
                    }
                }
                seq += 1;
            }
            unknown
        })
    };
    // Terminate under writes: once some were acknowledged.
    tokio::time::timeout(Duration::from_secs(10), async {
        while acked.lock().unwrap().len() < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("writes under way");
    let clean = c.terminate(leader, Duration::from_secs(15)).await.unwrap();
    assert!(clean, "the leader exits by itself on SIGTERM");
    assert!(
        std::fs::read_to_string(c.log_path(leader).unwrap())
            .unwrap()
            .contains("leadership handed over before stopping"),
        "{}",
        c.log_tail(leader, 30).unwrap()
    );
    // Writes go on under the new leader (a write dropped during the hand-over waits out the
    // client's 5 s deadline first).
    let before = acked.lock().unwrap().len();
    let went_on = tokio::time::timeout(Duration::from_secs(10), async {
        while acked.lock().unwrap().len() < before + 20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(went_on.is_ok(), "writes did not go on under the new leader");
    stop_tx.send(true).unwrap();
    let unknown = writer.await.unwrap();
    assert!(unknown <= 1, "{unknown} writes with an unknown outcome");
    let new_leader = c.member_id(c.leader_index().await.unwrap()).await.unwrap();
    assert_ne!(new_leader, old_id);

    c.restart(leader).unwrap();
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    for i in 0..3 {
        let got = c
            .client(i)
            .await
            .unwrap()
            .kv()
            .get("t/", GetOptions::new().with_prefix().with_keys_only())
            .await
            .unwrap();
        let keys: std::collections::BTreeSet<String> = got
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        for key in &acked {
            assert!(keys.contains(key), "member {i} lost acknowledged {key}");
        }
    }
}
