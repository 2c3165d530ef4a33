//! Typed configuration (the client's `Config`): compare-and-swap refuses a stale writer,
//! concurrent `update`s lose nothing, a watch yields the current value then every change (and the
//! delete), and a value that is not the type's JSON is an error, not a default.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use conclave_client::{Config, DeleteOptions, Error, PutOptions};
use serde::{Deserialize, Serialize};

use super::cluster;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
struct Limits {
    max_connections: u32,
    mode: String,
}

#[tokio::test]
async fn typed_config_swaps_updates_and_watches() {
    let c = cluster(3).await;
    let client = c.client(0).await.unwrap();
    let limits: Config<Limits> = Config::new(&client, "config/limits");
    assert_eq!(limits.get().await.unwrap(), None);

    let first = Limits {
        max_connections: 10,
        mode: "safe".into(),
    };
    let rev = limits.compare_and_swap(0, &first).await.unwrap().unwrap();
    // A writer that read nothing (revision 0) is refused and told what is there now.
    let stale = limits
        .compare_and_swap(0, &Limits::default())
        .await
        .unwrap();
    assert_eq!(stale.unwrap_err().unwrap().value, first);
    let mut changes = limits.watch().await.unwrap();
    let now = changes.next().await.unwrap().unwrap().unwrap();
    assert_eq!((now.value.clone(), now.revision), (first.clone(), rev));

    // Concurrent read-modify-writes through different members: none is lost.
    let mut writers = Vec::new();
    for w in 0..3 {
        let config: Config<Limits> = Config::new(&c.client(w).await.unwrap(), "config/limits");
        writers.push(tokio::spawn(async move {
            for _ in 0..5 {
                config
                    .update(|l| {
                        let mut l = l.unwrap_or_default();
                        l.max_connections += 1;
                        l
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(
        limits.get().await.unwrap().unwrap().value.max_connections,
        25
    );

    let mut seen = Vec::new();
    while seen.len() < 15 {
        let next = tokio::time::timeout(Duration::from_secs(10), changes.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(next.value.max_connections);
    }
    assert_eq!(
        seen,
        (11..=25).collect::<Vec<_>>(),
        "every change, in order"
    );

    client
        .kv()
        .delete("config/limits", DeleteOptions::new())
        .await
        .unwrap();
    assert_eq!(changes.next().await.unwrap().unwrap(), None);

    client
        .kv()
        .put("config/limits", "not json", PutOptions::new())
        .await
        .unwrap();
    assert!(matches!(limits.get().await, Err(Error::Decode { .. })));
}
