//! Locks: etcd's v3lock service and the client's `Mutex` recipe. Mutual exclusion under
//! concurrency, re-locking with the same lease, a lease that ends while waiting, a cancelled
//! waiter that leaves no key, and the fencing token refusing a holder that lost its lease.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use conclave_client::{GetOptions, Mutex, PutOptions, Session, SessionOptions, Txn, TxnOp};
use conclave_proto::v3lockpb::lock_client::LockClient;
use conclave_proto::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

use super::{cluster, wait_for_key};

async fn lock_client(endpoint: &str) -> LockClient<Channel> {
    LockClient::connect(endpoint.to_string()).await.unwrap()
}

#[tokio::test]
async fn the_lock_service_excludes_holders_and_hands_over_in_order() {
    let c = cluster(3).await;
    let inside = Arc::new(AtomicBool::new(false));
    let entered = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..6 {
        // Spread over every member: each serves the lock through itself.
        let endpoint = c.client_endpoint(w % 3);
        let client = c.client(w % 3).await.unwrap();
        let (inside, entered) = (inside.clone(), entered.clone());
        workers.push(tokio::spawn(async move {
            let lease = client.lease().grant(30, None).await.unwrap().id;
            let mut locks = lock_client(&endpoint).await;
            for _ in 0..5 {
                let held = locks
                    .lock(LockRequest {
                        name: b"t85/mutex".to_vec(),
                        lease,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(
                    held.key.starts_with(b"t85/mutex/"),
                    "{:?}",
                    String::from_utf8_lossy(&held.key)
                );
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.store(false, Ordering::SeqCst);
                entered.fetch_add(1, Ordering::SeqCst);
                locks.unlock(UnlockRequest { key: held.key }).await.unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(entered.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn relocking_with_the_same_lease_is_not_a_deadlock_and_bad_leases_are_refused() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();
    let mut locks = lock_client(&c.client_endpoint(0)).await;
    let lease = client.lease().grant(30, None).await.unwrap().id;
    let request = LockRequest {
        name: b"again".to_vec(),
        lease,
    };
    let first = locks.lock(request.clone()).await.unwrap().into_inner();
    let second = tokio::time::timeout(Duration::from_secs(5), locks.lock(request))
        .await
        .expect("the second lock with the same lease answers at once")
        .unwrap()
        .into_inner();
    assert_eq!(first.key, second.key);
    assert_eq!(first.key, format!("again/{lease:x}").into_bytes());

    let refused = locks
        .lock(LockRequest {
            name: b"again".to_vec(),
            lease: 0x1234,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.message(), "etcdserver: requested lease not found");

    // Without a lease each request gets its own (as etcd): two of them exclude each other.
    let first = locks
        .lock(LockRequest {
            name: b"nolease".to_vec(),
            lease: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let second = tokio::time::timeout(
        Duration::from_millis(500),
        locks.clone().lock(LockRequest {
            name: b"nolease".to_vec(),
            lease: 0,
        }),
    )
    .await;
    assert!(
        second.is_err(),
        "a second lease-less lock waits for the first"
    );
    locks
        .unlock(UnlockRequest { key: first.key })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_waiter_whose_lease_ends_gets_session_expired_and_a_cancelled_one_leaves_no_key() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();
    let endpoint = c.client_endpoint(0);
    let holder = client.lease().grant(30, None).await.unwrap().id;
    let mut locks = lock_client(&endpoint).await;
    let held = locks
        .lock(LockRequest {
            name: b"wait".to_vec(),
            lease: holder,
        })
        .await
        .unwrap()
        .into_inner();

    // A waiter that gives up after 300 ms: its key goes away.
    let quitter = client.lease().grant(30, None).await.unwrap().id;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        lock_client(&endpoint).await.lock(LockRequest {
            name: b"wait".to_vec(),
            lease: quitter,
        }),
    )
    .await;
    assert!(gave_up.is_err(), "the lock is held: the waiter waits");
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = client
                .kv()
                .get(format!("wait/{quitter:x}"), GetOptions::new())
                .await
                .unwrap();
            if r.kvs.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "a cancelled waiter left its key behind");

    // A waiter whose lease is revoked while it waits holds nothing when its turn comes.
    let doomed = client.lease().grant(30, None).await.unwrap().id;
    let waiter = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            lock_client(&endpoint)
                .await
                .lock(LockRequest {
                    name: b"wait".to_vec(),
                    lease: doomed,
                })
                .await
        })
    };
    // Revoke only once the waiter is queued (its key exists), not before it claimed.
    wait_for_key(&client, format!("wait/{doomed:x}")).await;
    client.lease().revoke(doomed).await.unwrap();
    locks.unlock(UnlockRequest { key: held.key }).await.unwrap();
    let answer = waiter.await.unwrap().unwrap_err();
    assert_eq!(answer.message(), "session expired");
}

/// The pattern docs/coordination.md teaches: every write the lock protects carries the fence. A
/// holder that stops renewing (paused) loses the lock when its lease expires; its late write is
/// refused, while the new holder's goes through.
#[tokio::test]
async fn the_fencing_token_refuses_a_holder_that_lost_its_lease() {
    let c = cluster(3).await;
    let client = c.client(0).await.unwrap();
    let slow = Session::new(&client, SessionOptions::new(2)).await.unwrap();
    let old = Mutex::new(&slow, "fenced").lock().await.unwrap();
    // The holder pauses: its renewals stop, the lease expires on the server.
    drop(slow);

    let fresh = Session::new(&client, SessionOptions::new(30))
        .await
        .unwrap();
    let new = tokio::time::timeout(Duration::from_secs(15), Mutex::new(&fresh, "fenced").lock())
        .await
        .expect("the lock passes on once the old lease expired")
        .unwrap();
    assert!(new.fencing_token() > old.fencing_token());

    let write = |held: &conclave_client::LockHeld, value: &str| {
        Txn::new().when([held.fence()]).and_then([TxnOp::put(
            "fenced/resource",
            value.to_string(),
            PutOptions::new(),
        )])
    };
    let late = client.kv().txn(write(&old, "old")).await.unwrap();
    assert!(!late.succeeded, "the paused holder's write was refused");
    let current = client.kv().txn(write(&new, "new")).await.unwrap();
    assert!(current.succeeded);
    let r = client
        .kv()
        .get("fenced/resource", GetOptions::new())
        .await
        .unwrap();
    assert_eq!(r.kvs[0].value, b"new");
    new.unlock(&client).await.unwrap();
}
