//! Elections: etcd's v3election service (the client's `Election` recipe inside the server).
//! Campaign in order, Leader, Proclaim, Observe every leader and value, leadership passing when the
//! leader's lease ends, and the errors for a deposed leader and an empty election.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use conclave_proto::v3electionpb::election_client::ElectionClient;
use conclave_proto::v3electionpb::{
    CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest,
};

use super::{cluster, wait_for_key};

#[tokio::test]
async fn leadership_passes_in_order_and_observers_see_every_leader_and_value() {
    let c = cluster(3).await;
    let client = c.client(0).await.unwrap();
    let mut first = ElectionClient::connect(c.client_endpoint(0)).await.unwrap();
    let mut second = ElectionClient::connect(c.client_endpoint(1)).await.unwrap();
    let mut watcher = ElectionClient::connect(c.client_endpoint(2)).await.unwrap();
    let name = b"t86/leader".to_vec();

    let empty = watcher
        .leader(LeaderRequest { name: name.clone() })
        .await
        .unwrap_err();
    assert_eq!(empty.message(), "election: no leader");

    let mut observed = watcher
        .observe(LeaderRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    let lease_a = client.lease().grant(30, None).await.unwrap().id;
    let lease_b = client.lease().grant(30, None).await.unwrap().id;
    let a = first
        .campaign(CampaignRequest {
            name: name.clone(),
            lease: lease_a,
            value: b"a1".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    assert_eq!(a.key, format!("t86/leader/{lease_a:x}").into_bytes());

    let b_campaign = {
        let name = name.clone();
        tokio::spawn(async move {
            second
                .campaign(CampaignRequest {
                    name,
                    lease: lease_b,
                    value: b"b1".to_vec(),
                })
                .await
        })
    };
    // Queued behind the leader (its key exists), and still waiting.
    wait_for_key(&client, format!("t86/leader/{lease_b:x}")).await;
    assert!(!b_campaign.is_finished(), "the second candidate waits");

    first
        .proclaim(ProclaimRequest {
            leader: Some(a.clone()),
            value: b"a2".to_vec(),
        })
        .await
        .unwrap();
    let now = watcher
        .leader(LeaderRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.kv.unwrap().value, b"a2");

    // The leader's lease ends: leadership passes to the next candidate.
    client.lease().revoke(lease_a).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(10), b_campaign)
        .await
        .expect("the second candidate is elected")
        .unwrap()
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    assert!(b.rev > a.rev);

    let stale = first
        .proclaim(ProclaimRequest {
            leader: Some(a),
            value: b"a3".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.message(), "election: not leader");

    let mut values = Vec::new();
    while values.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(10), observed.message())
            .await
            .expect("the observer keeps up")
            .unwrap()
            .unwrap();
        values.push(next.kv.unwrap().value);
    }
    assert_eq!(values, vec![b"a1".to_vec(), b"a2".to_vec(), b"b1".to_vec()]);

    first
        .resign(ResignRequest { leader: Some(b) })
        .await
        .unwrap();
    let gone = watcher.leader(LeaderRequest { name }).await.unwrap_err();
    assert_eq!(gone.message(), "election: no leader");
}
