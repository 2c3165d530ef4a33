//! Defragmentation: the leader's database file is compacted while writes keep coming — none fails,
//! none is lost, the file shrinks, the member's history still matches the others', and it restarts
//! from the new file. Killed in the middle, a member restarts from its old file.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_client::{Client, DeleteOptions, GetOptions, Kv, PutOptions};

use conclave_testkit::ClusterBuilder;

use super::binary;

/// Whether the member behind `client` serves (serializable, from its own state) `count` keys
/// under `prefix` within 20 s: a restarted member first replays its log.
async fn serves_locally(client: &Client, prefix: &str, count: i64) -> bool {
    let local = GetOptions::new()
        .with_prefix()
        .with_count_only()
        .with_serializable();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(r) = client.kv().get(prefix, local.clone()).await
                && r.count == count
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok()
}

/// Writes 2,000 keys of 4 KiB under `prefix` (8 MiB of history), eight writers at a time.
async fn fill(kv: &Kv, prefix: &str) {
    let mut writers = Vec::new();
    for t in 0..8u8 {
        let (kv, prefix) = (kv.clone(), prefix.to_string());
        writers.push(tokio::spawn(async move {
            for i in 0..250 {
                kv.put(
                    format!("{prefix}{t}/{i:04}"),
                    vec![t; 4096],
                    PutOptions::new(),
                )
                .await
                .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
}

fn db_file_size(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join("conclave.redb")).unwrap().len()
}

#[tokio::test]
async fn defragmenting_the_leader_under_writes_shrinks_its_file_and_loses_nothing() {
    // A short raft log: the history deleted below is then the file's bulk.
    let c = ClusterBuilder::new(binary(), 3)
        .args(["--experimental-snapshot-catchup-entries", "100"])
        .start()
        .await
        .unwrap();
    let leader = c.leader_index().await.unwrap();
    let client = c.client(leader).await.unwrap();
    let kv = client.kv();

    // Fill ~8 MiB of history, then delete it and compact it away: free pages in the file.
    fill(&kv, "big/").await;
    let deleted = kv
        .delete("big/", DeleteOptions::new().with_prefix())
        .await
        .unwrap();
    kv.compact(deleted.header.unwrap().revision, true)
        .await
        .unwrap();
    let data_dir = c.data_dir(leader).unwrap();
    let before = db_file_size(&data_dir);

    // Writes go on through the leader during the whole defragmentation.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let kv = kv.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !*stop_rx.borrow() {
                let key = format!("w/{seq:06}");
                kv.put(key.clone(), "v", PutOptions::new())
                    .await
                    .unwrap_or_else(|e| panic!("put {key} during defragmentation: {e}"));
                acked.lock().unwrap().push(key);
                seq += 1;
            }
        })
    };
    while acked.lock().unwrap().len() < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client
        .maintenance()
        .defragment_on(&c.client_endpoint(leader))
        .await
        .unwrap();
    let at_end = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < at_end + 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(true).unwrap();
    writer.await.unwrap();

    let after = db_file_size(&data_dir);
    assert!(after < before / 2, "file {before} -> {after} bytes");
    let log = std::fs::read_to_string(c.log_path(leader).unwrap()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("defragmented"))
        .expect("the member logs the defragmentation");
    eprintln!("{line}");

    // Every acknowledged write is there, and the histories agree.
    let written = acked.lock().unwrap().len() as i64;
    let got = kv
        .get("w/", GetOptions::new().with_prefix().with_count_only())
        .await
        .unwrap();
    assert_eq!(got.count, written);
    let revision = got.header.unwrap().revision;
    let hashes = super::hash_kv_everywhere(&c, &client, revision).await;
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");

    // Restarted from the new file (killed, so nothing is flushed on the way out).
    c.kill(leader).unwrap();
    c.restart(leader).unwrap();
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    let member = c.client(leader).await.unwrap();
    assert!(
        serves_locally(&member, "w/", written).await,
        "the restarted member lost writes"
    );
    assert!(db_file_size(&data_dir) < before / 2);
}

/// kill -9 in the middle of a defragmentation (while the copy is being written): the member comes
/// back from its old file with everything, and the half-made copy is gone.
#[tokio::test]
async fn a_member_killed_while_defragmenting_restarts_from_its_old_file() {
    let c = ClusterBuilder::new(binary(), 3).start().await.unwrap();
    let victim = c.leader_index().await.unwrap();
    let client = c.client(victim).await.unwrap();
    let kv = client.kv();
    fill(&kv, "k/").await;
    let data_dir = c.data_dir(victim).unwrap();
    let copy = data_dir.join("conclave.redb.defrag");
    let endpoint = c.client_endpoint(victim);
    let defrag = {
        let client = client.clone();
        tokio::spawn(async move { client.maintenance().defragment_on(&endpoint).await })
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while !copy.exists() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the copy is being written");
    c.kill(victim).unwrap();
    assert!(
        defrag.await.unwrap().is_err(),
        "the defragmentation cannot have finished"
    );

    c.restart(victim).unwrap();
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert!(!copy.exists(), "the half-made copy is removed at start");
    let member = c.client(victim).await.unwrap();
    assert!(
        serves_locally(&member, "k/", 2000).await,
        "the restarted member lost writes"
    );
}
