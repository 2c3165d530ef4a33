//! Alarms. The space quota: NOSPACE raised when the history reaches `--quota-backend-bytes`,
//! refusing writes on every member while deletes and compaction still work, and cleared by itself
//! once compaction brings the history back under the quota (defragmenting meanwhile works);
//! `alarm disarm` clears it too. The corruption check: CORRUPT for a member whose history
//! differs from the majority's.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use conclave_client::{Error, GetOptions, PutOptions};
use conclave_testkit::ClusterBuilder;

use super::binary;

#[tokio::test]
async fn nospace_is_raised_at_the_quota_and_clears_itself_after_compaction() {
    let c = ClusterBuilder::new(binary(), 3)
        .args(["--quota-backend-bytes", "65536"])
        .start()
        .await
        .unwrap();
    let leader = c.leader_index().await.unwrap();
    let client = c.client(leader).await.unwrap();
    let kv = client.kv();
    let mut refused = None;
    for i in 0..200 {
        match kv
            .put(format!("q/{i:03}"), vec![7u8; 1024], PutOptions::new())
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (at, err) = refused.expect("the quota refused a put");
    assert!(matches!(err, Error::NoSpace), "{err:?}");
    assert!((50..70).contains(&at), "refused after {at} KiB");

    let alarms = client.maintenance().alarm_list().await.unwrap().alarms;
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].alarm, 1, "NOSPACE");
    let status = client.maintenance().status().await.unwrap();
    assert!(
        status.errors[0].contains("alarm:NOSPACE"),
        "{:?}",
        status.errors
    );

    // Every member refuses, even a small write; reads, deletes and compaction still work.
    let follower = c.client((leader + 1) % 3).await.unwrap();
    let err = follower
        .kv()
        .put("small", "x", PutOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoSpace), "{err:?}");
    assert!(matches!(
        client.lease().grant(60, None).await.unwrap_err(),
        Error::NoSpace
    ));
    let got = kv
        .get("q/", GetOptions::new().with_prefix().with_count_only())
        .await
        .unwrap();
    assert_eq!(got.count, at as i64);
    let deleted = kv
        .delete("q/", conclave_client::DeleteOptions::new().with_prefix())
        .await
        .unwrap();
    kv.compact(deleted.header.unwrap().revision, true)
        .await
        .unwrap();
    // Defragmenting works with the alarm raised (the quota counts history, not file pages, so
    // NOSPACE does not wait for it).
    for i in 0..3 {
        client
            .maintenance()
            .defragment_on(&c.client_endpoint(i))
            .await
            .unwrap();
    }

    // The leader clears NOSPACE by itself.
    let cleared = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if client
                .maintenance()
                .alarm_list()
                .await
                .unwrap()
                .alarms
                .is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(cleared.is_ok(), "NOSPACE never cleared");
    follower
        .kv()
        .put("small", "x", PutOptions::new())
        .await
        .unwrap();

    // Raised again, and disarmed by hand.
    for i in 0..200 {
        if kv
            .put(format!("r/{i:03}"), vec![7u8; 1024], PutOptions::new())
            .await
            .is_err()
        {
            break;
        }
    }
    let disarmed = client.maintenance().alarm_disarm().await.unwrap();
    assert_eq!(disarmed.len(), 1);
    assert!(
        client
            .maintenance()
            .alarm_list()
            .await
            .unwrap()
            .alarms
            .is_empty()
    );
}

/// A member whose stored history was altered behind raft's back is found by the periodic
/// corruption check (HashKV against the majority), which raises CORRUPT: writes are refused.
#[tokio::test]
async fn the_corruption_check_flags_a_member_whose_history_was_altered() {
    use prost::Message as _;
    use redb::ReadableTable as _;
    let c = ClusterBuilder::new(binary(), 3)
        .args(["--experimental-corrupt-check-time", "1s"])
        .start()
        .await
        .unwrap();
    let leader = c.leader_index().await.unwrap();
    let client = c.client(leader).await.unwrap();
    for i in 0..20 {
        client
            .kv()
            .put(format!("c/{i}"), "good", PutOptions::new())
            .await
            .unwrap();
    }
    let victim = (leader + 1) % 3;
    let victim_id = c.member_id(victim).await.unwrap();
    // Once it has applied everything, change one stored value while it is down.
    let victim_kv = c.client(victim).await.unwrap().kv();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(r) = victim_kv
                .get(
                    "c/",
                    GetOptions::new()
                        .with_prefix()
                        .with_count_only()
                        .with_serializable(),
                )
                .await
                && r.count == 20
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the victim applied every write");
    // Stopped cleanly, so that its state database holds what it applied (after `kill -9` it
    // would replay the writes from its log at restart, undoing the alteration below).
    assert!(c.terminate(victim, Duration::from_secs(10)).await.unwrap());
    {
        let db = conclave_server::storage::open(&c.data_dir(victim).unwrap()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut mvcc = txn.open_table(conclave_server::storage::MVCC).unwrap();
            let (key, row) = {
                let (k, v) = mvcc.last().unwrap().unwrap();
                (k.value(), v.value().to_vec())
            };
            let mut kv = conclave_proto::mvccpb::KeyValue::decode(&row[1..]).unwrap();
            kv.value = b"evil".to_vec();
            let mut altered = vec![row[0]];
            kv.encode(&mut altered).unwrap();
            mvcc.insert(key, altered.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    c.restart(victim).unwrap();

    let flagged = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(r) = client.maintenance().alarm_list().await
                && let Some(a) = r.alarms.first()
            {
                return (a.member_id, a.alarm);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("CORRUPT raised");
    assert_eq!(flagged, (victim_id, 2), "CORRUPT for the altered member");
    let err = client
        .kv()
        .put("after", "x", PutOptions::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("corrupt cluster"), "{err}");
}
