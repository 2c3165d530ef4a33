//! Lessor rules: minimum TTL, grant/revoke, attachments, expiry only on the primary, renewal,
//! promotion grace and checkpoints. Time is tokio's paused clock.

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::storage;

struct Fixture {
    _dir: tempfile::TempDir,
    db: storage::Db,
    lessor: Lessor,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = storage::open(dir.path()).unwrap();
        Fixture {
            _dir: dir,
            db,
            lessor: Lessor::new(2),
        }
    }

    fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> T) -> T {
        let txn = self.db.begin_write().unwrap();
        let out = f(&txn);
        txn.commit().unwrap();
        out
    }

    fn grant(&self, id: i64, ttl: i64) -> Result<i64, ServerError> {
        self.write(|t| self.lessor.grant(t, id, ttl, Instant::now()).unwrap())
    }
}

fn moved(key: &str, from: i64, to: i64) -> LeaseMove {
    LeaseMove {
        key: key.into(),
        from,
        to,
    }
}

#[test]
fn minimum_ttl_is_one_and_a_half_election_timeouts_rounded_up() {
    assert_eq!(min_ttl(Duration::from_millis(1000)), 2);
    assert_eq!(min_ttl(Duration::from_millis(500)), 1);
    assert_eq!(min_ttl(Duration::from_millis(3000)), 5);
    assert_eq!(min_ttl(Duration::from_millis(100)), 1);
}

#[tokio::test(start_paused = true)]
async fn grant_raises_small_ttls_and_refuses_duplicates() {
    let f = Fixture::new();
    assert_eq!(f.grant(1, 1), Ok(2), "raised to the minimum");
    assert_eq!(f.grant(2, 60), Ok(60));
    assert_eq!(f.grant(1, 60), Err(ServerError::LeaseExist));
    assert_eq!(f.lessor.ids(), vec![1, 2]);
}

#[tokio::test(start_paused = true)]
async fn keys_follow_their_lease_and_revoke_returns_them() {
    let f = Fixture::new();
    f.grant(1, 10).unwrap();
    f.grant(2, 10).unwrap();
    f.lessor
        .on_lease_moves(&[moved("a", 0, 1), moved("b", 0, 1)]);
    // "b" moves to lease 2, "a" is deleted.
    f.lessor
        .on_lease_moves(&[moved("b", 1, 2), moved("a", 1, 0)]);
    let ttl = f.lessor.time_to_live(2, Instant::now(), true).unwrap();
    assert_eq!(ttl.keys, vec![b"b".to_vec()]);
    let keys = f.write(|t| f.lessor.revoke(t, 1).unwrap()).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    let keys = f.write(|t| f.lessor.revoke(t, 2).unwrap()).unwrap();
    assert_eq!(keys, vec![b"b".to_vec()]);
    assert_eq!(
        f.write(|t| f.lessor.revoke(t, 2).unwrap()),
        Err(ServerError::LeaseNotFound)
    );
}

#[tokio::test(start_paused = true)]
async fn only_the_primary_expires_and_renews() {
    let f = Fixture::new();
    f.grant(1, 5).unwrap();
    let later = Instant::now() + Duration::from_secs(60);
    assert!(f.lessor.take_expired(later, 10).is_empty(), "not primary");
    assert_eq!(
        f.lessor.renew(1, Instant::now()),
        Err(ServerError::NotLeader)
    );

    let extend = Duration::from_secs(1);
    f.lessor.promote(Instant::now(), extend, 1);
    tokio::time::advance(Duration::from_millis(5900)).await;
    assert!(
        f.lessor.take_expired(Instant::now(), 10).is_empty(),
        "TTL plus the promotion grace has not passed"
    );
    tokio::time::advance(Duration::from_millis(200)).await;
    assert_eq!(f.lessor.take_expired(Instant::now(), 10), vec![1]);
    assert!(
        f.lessor.take_expired(Instant::now(), 10).is_empty(),
        "a revoke in flight is not proposed twice"
    );
    assert_eq!(
        f.lessor.take_expired(Instant::now() + REVOKE_RETRY, 10),
        vec![1],
        "retried after the pause"
    );
    assert_eq!(
        f.lessor.renew(1, Instant::now()),
        Ok(Renewal::Expired),
        "an expired lease is not renewed"
    );
}

/// An expired lease is "not found" only once its revoke is applied; if this member stops leading
/// first, the successor decides (its clock may have seen renewals this one never saw).
#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_not_found_only_after_its_revoke() {
    let f = Arc::new(Fixture::new());
    f.grant(1, 5).unwrap();
    f.grant(2, 5).unwrap();
    f.lessor.promote(Instant::now(), Duration::ZERO, 7);
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(f.lessor.renew(1, Instant::now()), Ok(Renewal::Expired));
    let limit = Duration::from_secs(2);
    assert_eq!(
        f.lessor.expired_outcome(1, limit).await,
        ServerError::Timeout,
        "no revoke, no demotion: no answer"
    );
    let waiting = {
        let f = f.clone();
        tokio::spawn(async move { f.lessor.expired_outcome(1, limit).await })
    };
    tokio::task::yield_now().await;
    f.write(|t| f.lessor.revoke(t, 1).unwrap()).unwrap();
    assert_eq!(waiting.await.unwrap(), ServerError::LeaseNotFound);

    let waiting = {
        let f = f.clone();
        tokio::spawn(async move { f.lessor.expired_outcome(2, limit).await })
    };
    tokio::task::yield_now().await;
    f.lessor.demote();
    assert_eq!(waiting.await.unwrap(), ServerError::NotLeader);
}

#[tokio::test(start_paused = true)]
async fn renewal_restarts_the_full_ttl() {
    let f = Fixture::new();
    f.lessor.promote(Instant::now(), Duration::ZERO, 1);
    f.grant(1, 4).unwrap();
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            f.lessor.renew(1, Instant::now()),
            Ok(Renewal::Renewed {
                ttl: 4,
                clear_checkpoint: false,
                term: 1
            })
        );
        assert!(f.lessor.take_expired(Instant::now(), 10).is_empty());
    }
    let ttl = f.lessor.time_to_live(1, Instant::now(), false).unwrap();
    assert_eq!((ttl.granted_ttl, ttl.remaining), (4, 4));
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(f.lessor.take_expired(Instant::now(), 10), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn expiry_is_revoked_in_bounded_batches_oldest_first() {
    let f = Fixture::new();
    f.lessor.promote(Instant::now(), Duration::ZERO, 1);
    for id in 1..=10 {
        f.grant(id, 10 + id).unwrap();
    }
    tokio::time::advance(Duration::from_secs(100)).await;
    assert_eq!(f.lessor.take_expired(Instant::now(), 4), vec![1, 2, 3, 4]);
    assert_eq!(f.lessor.take_expired(Instant::now(), 4), vec![5, 6, 7, 8]);
    assert_eq!(f.lessor.take_expired(Instant::now(), 4), vec![9, 10]);
}

#[tokio::test(start_paused = true)]
async fn checkpoints_bound_what_a_new_leader_grants() {
    let f = Fixture::new();
    f.grant(1, 30).unwrap();
    f.lessor.promote(Instant::now(), Duration::from_secs(1), 1);
    let interval = Duration::from_secs(5);
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(
        f.lessor
            .take_checkpoints(Instant::now(), interval, 10)
            .is_empty(),
        "the grace of promotion is not drift"
    );
    tokio::time::advance(Duration::from_secs(7)).await;
    // 31 s from promotion, 10 s passed: 21 s left, 9 s below the stored 30.
    let cps = f.lessor.take_checkpoints(Instant::now(), interval, 10);
    assert_eq!(cps.len(), 1);
    assert_eq!((cps[0].id, cps[0].remaining_ttl), (1, 21));
    assert!(
        f.lessor
            .take_checkpoints(Instant::now(), interval, 10)
            .is_empty(),
        "in flight"
    );
    f.write(|t| f.lessor.checkpoint(t, &cps).unwrap());
    f.lessor.checkpoints_done([1]);

    // A new leader starts from the checkpoint, not from the full TTL.
    f.lessor.demote();
    f.lessor.promote(Instant::now(), Duration::from_secs(1), 1);
    let ttl = f.lessor.time_to_live(1, Instant::now(), false).unwrap();
    assert_eq!(ttl.remaining, 22);

    // A renewal must clear the stored checkpoint before it is acknowledged.
    assert!(matches!(
        f.lessor.renew(1, Instant::now()),
        Ok(Renewal::Renewed {
            clear_checkpoint: true,
            ..
        })
    ));
    f.write(|t| {
        f.lessor
            .checkpoint(
                t,
                &[LeaseCheckpoint {
                    id: 1,
                    remaining_ttl: 0,
                }],
            )
            .unwrap()
    });
    assert!(matches!(
        f.lessor.renew(1, Instant::now()),
        Ok(Renewal::Renewed {
            clear_checkpoint: false,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn leases_survive_a_reopen_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = storage::open(dir.path()).unwrap();
    let store = Store::open(db.clone()).unwrap();
    let lessor = Lessor::new(2);
    let txn = db.begin_write().unwrap();
    lessor.grant(&txn, 7, 30, Instant::now()).unwrap().unwrap();
    lessor
        .checkpoint(
            &txn,
            &[LeaseCheckpoint {
                id: 7,
                remaining_ttl: 12,
            }],
        )
        .unwrap();
    {
        let mut w = store.writer(&txn).unwrap();
        w.put(b"k", b"v".to_vec(), 7).unwrap();
        w.finish();
    }
    txn.commit().unwrap();
    drop(store);

    let store = Store::open(db.clone()).unwrap();
    let reopened = Lessor::open(&db.get(), &store, 2).unwrap();
    let ttl = reopened.time_to_live(7, Instant::now(), true).unwrap();
    assert_eq!(ttl.granted_ttl, 30);
    assert_eq!(ttl.remaining, 12, "the checkpoint is kept");
    assert_eq!(ttl.keys, vec![b"k".to_vec()]);
}

#[tokio::test(start_paused = true)]
async fn checkpoint_settled_waits_for_the_proposal() {
    let f = Arc::new(Fixture::new());
    f.grant(1, 30).unwrap();
    f.lessor.promote(Instant::now(), Duration::ZERO, 1);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        f.lessor
            .take_checkpoints(Instant::now(), Duration::from_secs(5), 10)
            .len(),
        1
    );
    let f2 = f.clone();
    let waiter = tokio::spawn(async move {
        f2.lessor
            .checkpoint_settled(1, Duration::from_secs(60))
            .await;
        Instant::now()
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let done_at = Instant::now();
    f.lessor.checkpoints_done([1]);
    assert_eq!(waiter.await.unwrap(), done_at);
}

/// Keep-alives that reach a fresh leader wait for its promotion, woken by it (no polling).
#[tokio::test(start_paused = true)]
async fn waiting_for_promotion_ends_when_promoted() {
    let f = Arc::new(Fixture::new());
    assert!(!f.lessor.promoted(Duration::from_millis(100)).await);
    let waiting = {
        let f = f.clone();
        tokio::spawn(async move { f.lessor.promoted(Duration::from_secs(5)).await })
    };
    tokio::task::yield_now().await;
    f.lessor.promote(Instant::now(), Duration::ZERO, 3);
    assert!(waiting.await.unwrap());
}
