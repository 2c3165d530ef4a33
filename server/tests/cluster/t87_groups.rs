//! Group membership: the conclave.v1.Membership service and the client's `Group` recipe. Join with
//! a TTL or a lease, list with metadata and join revisions, watch from the list's revision (joins,
//! updates, leaves, a lease ending), bad input; and a watcher that keeps every join in order while
//! a member of the cluster is killed, then sees every member leave with its session.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use conclave_client::conclavepb::group_event::EventType;
use conclave_client::conclavepb::membership_client::MembershipClient;
use conclave_client::conclavepb::{
    GroupEvent, JoinRequest, LeaveRequest, ListRequest, WatchGroupRequest,
};
use conclave_client::{Group, Session, SessionOptions};
use tonic::Code;

use super::cluster;

fn summary(events: &[GroupEvent]) -> Vec<(EventType, String, String)> {
    events
        .iter()
        .map(|e| {
            let m = e.member.clone().unwrap();
            (
                EventType::try_from(e.r#type).unwrap(),
                String::from_utf8(m.id).unwrap(),
                String::from_utf8(m.metadata).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_membership_service_lists_and_watches_joins_updates_and_leaves() {
    let c = cluster(3).await;
    let client = c.client(0).await.unwrap();
    let mut groups = MembershipClient::connect(c.client_endpoint(1))
        .await
        .unwrap();
    let join = |id: &str, metadata: &str, lease: i64, ttl: i64| JoinRequest {
        group: "workers".into(),
        member_id: id.into(),
        metadata: metadata.into(),
        lease,
        ttl,
    };
    let a = groups
        .join(join("a", "10.0.0.1", 0, 30))
        .await
        .unwrap()
        .into_inner();
    let a = a.member.unwrap();
    assert!(a.lease != 0, "a lease was granted for the TTL");
    let lease_b = client.lease().grant(30, None).await.unwrap().id;
    let lease_c = client.lease().grant(30, None).await.unwrap().id;
    groups
        .join(join("b", "10.0.0.2", lease_b, 0))
        .await
        .unwrap();
    groups
        .join(join("c", "10.0.0.3", lease_c, 0))
        .await
        .unwrap();

    let listed = groups
        .list(ListRequest {
            group: "workers".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&[u8]> = listed.members.iter().map(|m| m.id.as_slice()).collect();
    assert_eq!(ids, vec![b"a".as_slice(), b"b", b"c"]);
    assert_eq!(listed.members[0].metadata, b"10.0.0.1");
    assert_eq!(listed.members[0].join_revision, a.join_revision);
    let at = listed.header.unwrap().revision;

    let mut changes = groups
        .watch(WatchGroupRequest {
            group: "workers".into(),
            start_revision: at + 1,
        })
        .await
        .unwrap()
        .into_inner();
    groups
        .join(join("a", "10.0.0.9", a.lease, 0))
        .await
        .unwrap();
    let left = groups
        .leave(LeaveRequest {
            group: "workers".into(),
            member_id: "b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(left.left);
    client.lease().revoke(lease_c).await.unwrap();
    groups
        .join(join("d", "10.0.0.4", lease_b, 0))
        .await
        .unwrap();

    let mut events = Vec::new();
    while events.len() < 4 {
        let batch = tokio::time::timeout(Duration::from_secs(10), changes.message())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        events.extend(batch.events);
    }
    assert_eq!(
        summary(&events),
        vec![
            (EventType::Update, "a".into(), "10.0.0.9".into()),
            (EventType::Leave, "b".into(), "10.0.0.2".into()),
            (EventType::Leave, "c".into(), "10.0.0.3".into()),
            (EventType::Join, "d".into(), "10.0.0.4".into()),
        ]
    );
    assert!(events.windows(2).all(|w| w[0].revision < w[1].revision));

    let refused = groups.join(join("e", "x", 0, 0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "conclave: a member needs a lease or a ttl"
    );
    let bad = groups
        .list(ListRequest {
            group: "a/b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_group_watch_keeps_every_join_in_order_across_a_member_kill() {
    let c = cluster(3).await;
    let watcher = Group::new(&c.client_all().await.unwrap(), "fleet").unwrap();
    let writer_client = c.client(1).await.unwrap();
    let writer = Group::new(&writer_client, "fleet").unwrap();
    let session = Session::new(&writer_client, SessionOptions::new(30))
        .await
        .unwrap();
    let (at, members) = watcher.list().await.unwrap();
    assert!(members.is_empty());
    let mut changes = watcher.watch(at + 1).await.unwrap();
    for i in 0..10 {
        if i == 3 {
            c.kill(0).unwrap();
        }
        // A join whose outcome is unknown (the kill) is simply tried again: joining is idempotent.
        let id = format!("n{i:02}");
        let mut tries = 0;
        while let Err(e) = writer.join_session(&session, id.clone(), "up").await {
            tries += 1;
            assert!(tries < 20, "join {id}: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut joined = Vec::new();
    while joined.len() < 10 {
        let batch = tokio::time::timeout(Duration::from_secs(20), changes.next())
            .await
            .expect("the watch goes on after the kill")
            .unwrap()
            .unwrap();
        for e in batch {
            let id = String::from_utf8(e.member.unwrap().id).unwrap();
            match EventType::try_from(e.r#type).unwrap() {
                EventType::Join => joined.push(id),
                // A retried join that had taken effect already.
                EventType::Update => {
                    assert!(joined.contains(&id), "update of {id} before its join")
                }
                EventType::Leave => panic!("{id} left"),
            }
        }
    }
    let expected: Vec<String> = (0..10).map(|i| format!("n{i:02}")).collect();
    assert_eq!(joined, expected);
    // Closing the session revokes its lease: every member leaves, in one revision.
    session.close().await.unwrap();
    let mut left = Vec::new();
    while left.len() < 10 {
        let batch = tokio::time::timeout(Duration::from_secs(20), changes.next())
            .await
            .expect("the leaves arrive")
            .unwrap()
            .unwrap();
        for e in batch {
            if e.r#type == EventType::Leave as i32 {
                left.push(String::from_utf8(e.member.unwrap().id).unwrap());
            }
        }
    }
    left.sort();
    assert_eq!(left, expected);
    c.restart(0).unwrap();
    let (_, members) = watcher.list().await.unwrap();
    assert!(members.is_empty(), "members leave with their session");
}
