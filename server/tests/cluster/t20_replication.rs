//! Three members: every member accepts every request, reads are linearizable on followers, and
//! identity and membership are visible everywhere.

use conclave_client::{GetOptions, PutOptions};

use super::cluster;

#[tokio::test]
async fn writes_through_any_member_are_read_linearizably_from_every_member() {
    let c = cluster(3).await;
    for writer in 0..3 {
        let kv = c.client(writer).await.unwrap().kv();
        let key = format!("from-{writer}");
        kv.put(key.clone(), "v", PutOptions::new()).await.unwrap();
        // A linearizable read on any member right after the write must see it.
        for reader in 0..3 {
            let got = c
                .client(reader)
                .await
                .unwrap()
                .kv()
                .get(key.clone(), GetOptions::new())
                .await
                .unwrap();
            assert_eq!(got.kvs.len(), 1, "member {reader} missed {key}");
        }
    }
}

#[tokio::test]
async fn members_agree_on_identity_and_list_each_other() {
    let c = cluster(3).await;
    let mut cluster_ids = Vec::new();
    for i in 0..3 {
        let client = c.client(i).await.unwrap();
        let status = client.maintenance().status().await.unwrap();
        let header = status.header.unwrap();
        cluster_ids.push(header.cluster_id);
        assert_eq!(header.member_id, c.member_id(i).await.unwrap());
        assert_ne!(status.leader, 0);
        let members = client.cluster().member_list().await.unwrap().members;
        assert_eq!(members.len(), 3);
        // Every member publishes its client URL through raft.
        for _ in 0..50 {
            let members = client.cluster().member_list().await.unwrap().members;
            if members.iter().all(|m| !m.client_ur_ls.is_empty()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let members = client.cluster().member_list().await.unwrap().members;
        let mut names: Vec<_> = members.iter().map(|m| m.name.clone()).collect();
        names.sort();
        assert_eq!(names, ["n1", "n2", "n3"]);
        assert!(members.iter().all(|m| m.client_ur_ls.len() == 1));
    }
    cluster_ids.dedup();
    assert_eq!(cluster_ids.len(), 1);
}

#[tokio::test]
async fn leadership_moves_on_request() {
    let c = cluster(3).await;
    let leader = c.leader_index().await.unwrap();
    let target = (leader + 1) % 3;
    let target_id = c.member_id(target).await.unwrap();
    let mut raw = conclave_proto::etcdserverpb::maintenance_client::MaintenanceClient::connect(
        c.client_endpoint(leader),
    )
    .await
    .unwrap();
    raw.move_leader(conclave_proto::etcdserverpb::MoveLeaderRequest { target_id })
        .await
        .unwrap();
    // Probes may time out on a loaded machine: ask until every member has an answer.
    let mut seen = c.leader_index().await;
    for _ in 0..50 {
        if seen.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        seen = c.leader_index().await;
    }
    assert_eq!(seen.unwrap(), target);
    // A follower refuses, with etcd's error.
    let mut follower =
        conclave_proto::etcdserverpb::maintenance_client::MaintenanceClient::connect(
            c.client_endpoint(leader),
        )
        .await
        .unwrap();
    let err = follower
        .move_leader(conclave_proto::etcdserverpb::MoveLeaderRequest { target_id })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: not leader");
}
