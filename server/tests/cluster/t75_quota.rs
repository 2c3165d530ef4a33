//! The space quota: NOSPACE raised when the history reaches `--quota-backend-bytes`, refusing
//! writes on every member while deletes and compaction still work, and cleared by itself once
//! compaction brings the history back under the quota; `alarm disarm` clears it too.

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
