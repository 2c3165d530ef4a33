//! Backups: HashKV agrees on every member at the same revision; a backup taken from a running
//! cluster restores into a new cluster with identical history (same HashKV), leases included.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::time::Duration;

use conclave_client::{GetOptions, PutOptions};
use conclave_server::membership::InitialMember;
use conclave_server::storage::backup;
use conclave_testkit::Cluster;

use super::binary;

#[tokio::test]
async fn a_backup_restores_into_a_new_cluster_with_identical_history() {
    let a = Cluster::start(binary(), 3).await.unwrap();
    let client = a.client_all().await.unwrap();
    let kv = client.kv();
    for i in 0..300 {
        kv.put(format!("b/{i:04}"), format!("{i}"), PutOptions::new())
            .await
            .unwrap();
    }
    for i in 0..50 {
        kv.put(format!("b/{i:04}"), "second", PutOptions::new())
            .await
            .unwrap();
    }
    let mid = kv.delete("b/0299", Default::default()).await.unwrap();
    let compact_at = mid.header.unwrap().revision - 100;
    kv.compact(compact_at, true).await.unwrap();
    let lease = client.lease().grant(3600, None).await.unwrap().id;
    let last = kv
        .put("b/leased", "x", PutOptions::new().with_lease(lease))
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;

    let before = super::hash_kv_everywhere(&a, &client, last).await;
    assert!(
        before.windows(2).all(|w| w[0] == w[1]),
        "every member has the same history: {before:?}"
    );
    assert_eq!(before[0].1, compact_at);

    // Take the backup through the client, as `kvctl snapshot save` does.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let mut stream = client.maintenance().snapshot().await.unwrap();
    let mut out = std::fs::File::create(&file).unwrap();
    let mut last_remaining = u64::MAX;
    while let Some(chunk) = stream.message().await.unwrap() {
        out.write_all(&chunk.blob).unwrap();
        assert!(chunk.remaining_bytes < last_remaining);
        last_remaining = chunk.remaining_bytes;
    }
    assert_eq!(last_remaining, 0);
    drop(out);
    let info = backup::verify(&file).unwrap();
    assert_eq!(info.header.revision, last);
    assert_eq!(info.keys, 300);

    // A new cluster: start it once for its addresses and token, stop it, restore every member.
    let b = Cluster::start(binary(), 3).await.unwrap();
    let initial: Vec<InitialMember> = (0..3)
        .map(|i| InitialMember {
            name: b.name(i).unwrap(),
            peer_urls: vec![b.peer_url(i).unwrap()],
        })
        .collect();
    for i in 0..3 {
        b.kill(i).unwrap();
    }
    for i in 0..3 {
        let data_dir = b.data_dir(i).unwrap();
        std::fs::remove_dir_all(&data_dir).unwrap();
        backup::restore(&file, &data_dir, &b.name(i).unwrap(), &initial, b.token()).unwrap();
    }
    for i in 0..3 {
        b.restart(i).unwrap();
    }
    b.wait_ready(Duration::from_secs(30)).await.unwrap();
    let restored = b.client_all().await.unwrap();
    let after = super::hash_kv_everywhere(&b, &restored, last).await;
    assert_eq!(after, before, "the restored history is identical");

    let got = restored
        .kv()
        .get("b/", GetOptions::new().with_prefix().with_count_only())
        .await
        .unwrap();
    assert_eq!(got.count, 300);
    let ttl = restored.lease().time_to_live(lease, true).await.unwrap();
    assert_eq!(ttl.keys, vec![b"b/leased".to_vec()]);
    // The new cluster goes on from the backup's revision.
    let next = restored
        .kv()
        .put("b/new", "1", PutOptions::new())
        .await
        .unwrap();
    assert_eq!(next.header.unwrap().revision, last + 1);
    // Its members are its own.
    let members = restored.cluster().member_list().await.unwrap().members;
    let mut peers: Vec<String> = members.iter().flat_map(|m| m.peer_ur_ls.clone()).collect();
    peers.sort();
    let mut want: Vec<String> = (0..3).map(|i| b.peer_url(i).unwrap()).collect();
    want.sort();
    assert_eq!(peers, want);
}
