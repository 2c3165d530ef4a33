//! Sessions and the informer against real `conclave` clusters started by the test kit: a session
//! keeps its key alive well past its TTL and takes it along when closed, leaves it to expire when
//! dropped, can adopt an existing lease, and reports a lease revoked by someone else; an informer
//! lists a prefix then follows it, emits events in order with the previous values, answers
//! `wait_for_revision` even when nothing under its prefix changes, and, after missing a compacted
//! stretch of history (its member frozen, then killed with SIGKILL), re-lists and ends identical to
//! a fresh linearizable read. Needs the `conclave` binary (built by `cargo test --workspace`; or set
//! CONCLAVE_BIN). Timeouts are generous: nothing here asserts speed, only outcomes.

// Test code: a failed unwrap is a failed test, which is what we want.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use conclave_client::mvccpb::KeyValue;
use conclave_client::proto::ResponseHeader;
use conclave_client::{
    Client, ConnectOptions, DeleteOptions, Error, GetOptions, Informer, InformerEvent,
    InformerOptions, LeaseLoss, PutOptions, Session, SessionOptions,
};
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep, timeout};

mod common;

use common::{PATIENCE, cluster, options};

/// A client over the given endpoints, tried in this order.
async fn client(endpoints: &[String], options: ConnectOptions) -> Client {
    Client::connect(endpoints, options).await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The revision of a response's header.
fn revision_of(header: Option<ResponseHeader>) -> i64 {
    header.expect("response has a header").revision
}

/// How many keys `key` (a single key) has: 0 or 1.
async fn count(client: &Client, key: &str) -> i64 {
    client.kv().get(key, GetOptions::new()).await.unwrap().count
}

/// A fresh linearizable read of every key under `prefix`, as the informer keeps it.
async fn fresh(client: &Client, prefix: &str) -> BTreeMap<Vec<u8>, KeyValue> {
    let response = client
        .kv()
        .get(prefix, GetOptions::new().with_prefix())
        .await
        .unwrap();
    response
        .kvs
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect()
}

/// (key, value) of every pair in a map, in key order.
fn pairs(map: &BTreeMap<Vec<u8>, KeyValue>) -> Vec<(String, String)> {
    map.values()
        .map(|kv| (text(&kv.key), text(&kv.value)))
        .collect()
}

/// Puts until acknowledged (a write whose outcome was unknown may land twice; the tests below
/// only compare final states). Returns the acknowledged revision.
async fn put_retrying(client: &Client, key: &str, value: &str) -> i64 {
    timeout(Duration::from_secs(60), async {
        loop {
            match client.kv().put(key, value, PutOptions::new()).await {
                Ok(r) => return revision_of(r.header),
                Err(_) => sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the put is acknowledged")
}

/// Deletes until acknowledged. Returns the acknowledged revision.
async fn delete_retrying(client: &Client, key: &str) -> i64 {
    timeout(Duration::from_secs(60), async {
        loop {
            match client.kv().delete(key, DeleteOptions::new()).await {
                Ok(r) => return revision_of(r.header),
                Err(_) => sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the delete is acknowledged")
}

/// Compacts history up to `revision`, retrying until acknowledged (a retry after an attempt that
/// did land is refused as already compacted, which is just as good).
async fn compact_retrying(client: &Client, revision: i64) {
    timeout(Duration::from_secs(60), async {
        loop {
            match client.kv().compact(revision, true).await {
                Ok(_) | Err(Error::Compacted) => return,
                Err(_) => sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the compaction is acknowledged")
}

/// Asserts that lease `id` no longer exists.
async fn assert_lease_gone(client: &Client, id: i64) {
    match client.lease().time_to_live(id, false).await {
        Ok(left) => assert_eq!(left.ttl, -1, "{left:?}"),
        Err(err) => assert!(matches!(err, Error::LeaseNotFound), "{err:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_keeps_its_key_alive_and_close_deletes_it() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();

    let session = client.session(3).await.unwrap();
    let id = session.lease_id();
    assert!(id > 0);
    assert!(!session.is_lost());
    assert_eq!(session.loss(), None);
    let ttl = session.ttl();
    assert!(ttl >= 3, "granted at least what was asked: {ttl}");
    session.put("s/k", "v").await.unwrap();
    let got = client.kv().get("s/k", GetOptions::new()).await.unwrap();
    assert_eq!(
        got.kvs[0].lease, id,
        "the key is attached to the session's lease"
    );

    // Well past three TTLs, the session and its key are alive all along.
    let until = Instant::now() + Duration::from_secs(3 * ttl.unsigned_abs() + 2);
    while Instant::now() < until {
        assert!(!session.is_lost(), "session lost while kept alive");
        assert_eq!(count(&client, "s/k").await, 1, "the key expired");
        sleep(Duration::from_millis(500)).await;
    }

    // Closing revokes the lease: the key is gone at once, not after the TTL.
    session.close().await.unwrap();
    assert_eq!(count(&client, "s/k").await, 0, "close deletes the key");
    assert_lease_gone(&client, id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_session_leaves_its_lease_to_expire() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();

    let session = Session::new(&client, SessionOptions::new(3)).await.unwrap();
    let id = session.lease_id();
    let ttl = session.ttl().unsigned_abs();
    session.put("d/k", "v").await.unwrap();
    drop(session);

    // Not revoked by the drop: the key is still there right after it.
    assert_eq!(count(&client, "d/k").await, 1);
    // It goes when the lease expires.
    timeout(Duration::from_secs(ttl + 15), async {
        while count(&client, "d/k").await != 0 {
            sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("the key of the dropped session expires with its lease");
    assert_lease_gone(&client, id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_can_adopt_an_existing_lease() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();

    let id = client.lease().grant(30, None).await.unwrap().id;
    let session = Session::new(&client, SessionOptions::new(5).with_lease(id))
        .await
        .unwrap();
    assert_eq!(session.lease_id(), id);
    assert!(
        session.ttl() > 5,
        "the lease keeps its own TTL: {}",
        session.ttl()
    );
    session
        .put_with("a/k", "v", PutOptions::new().with_prev_kv())
        .await
        .unwrap();
    let got = client.kv().get("a/k", GetOptions::new()).await.unwrap();
    assert_eq!(got.kvs[0].lease, id);
    session.close().await.unwrap();
    assert_eq!(count(&client, "a/k").await, 0);
    assert_lease_gone(&client, id).await;

    // A lease that does not exist cannot be adopted.
    let missing = Session::new(&client, SessionOptions::new(5).with_lease(id)).await;
    assert!(matches!(missing, Err(Error::LeaseNotFound)), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_revoked_elsewhere_is_reported_lost() {
    let c = cluster(1).await;
    let owner = c.client(0).await.unwrap();
    let other = c.client(0).await.unwrap();

    // A long TTL: the loss must be learned from the server, well before the lease could expire.
    let session = owner.session(30).await.unwrap();
    session.put("l/k", "v").await.unwrap();
    other.lease().revoke(session.lease_id()).await.unwrap();
    let loss = timeout(Duration::from_secs(20), session.lost())
        .await
        .expect("the loss is reported before the TTL could run out");
    assert_eq!(loss, LeaseLoss::NotFound);
    assert!(session.is_lost());
    assert_eq!(session.loss(), Some(LeaseLoss::NotFound));
    assert_eq!(
        count(&owner, "l/k").await,
        0,
        "the revoke took the key along"
    );

    // A lost session refuses to put, and closing it is not an error (the lease is gone already).
    let put = session.put("l/k2", "v").await;
    assert!(matches!(put, Err(Error::LeaseNotFound)), "{put:?}");
    assert_eq!(count(&owner, "l/k2").await, 0);
    session.close().await.unwrap();
}

/// (kind, key, value, revision, previous value) of an informer event.
type Summary = (&'static str, String, String, i64, Option<String>);

fn summary(event: &InformerEvent) -> Summary {
    match event {
        InformerEvent::Put { kv, prev } => (
            "PUT",
            text(&kv.key),
            text(&kv.value),
            kv.mod_revision,
            prev.as_ref().map(|p| text(&p.value)),
        ),
        InformerEvent::Delete {
            key,
            revision,
            prev,
        } => (
            "DELETE",
            text(key),
            String::new(),
            *revision,
            prev.as_ref().map(|p| text(&p.value)),
        ),
        InformerEvent::Resync { revision } => {
            ("RESYNC", String::new(), String::new(), *revision, None)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_informer_lists_then_follows_puts_and_deletes_in_order() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();
    let kv = client.kv();

    kv.put("inf/a", "1", PutOptions::new()).await.unwrap();
    kv.put("inf/b", "1", PutOptions::new()).await.unwrap();
    kv.put("inf0", "outside", PutOptions::new()).await.unwrap();
    kv.put("other", "x", PutOptions::new()).await.unwrap();
    let r = kv.put("inf/c", "1", PutOptions::new()).await.unwrap();
    let listed = revision_of(r.header);

    let informer = Informer::start(&client, "inf/", InformerOptions::new())
        .await
        .unwrap();
    assert_eq!(informer.prefix(), b"inf/");
    let (revision, snapshot) = informer.snapshot();
    assert!(revision >= listed, "listed at {revision}, before {listed}");
    assert_eq!(
        pairs(&snapshot),
        vec![
            ("inf/a".to_owned(), "1".to_owned()),
            ("inf/b".to_owned(), "1".to_owned()),
            ("inf/c".to_owned(), "1".to_owned()),
        ]
    );
    assert_eq!(snapshot, fresh(&client, "inf/").await);
    let mut events = informer.subscribe();

    // Live changes, inside and outside the prefix.
    let put_a = revision_of(
        kv.put("inf/a", "2", PutOptions::new())
            .await
            .unwrap()
            .header,
    );
    let put_d = revision_of(
        kv.put("inf/d", "1", PutOptions::new())
            .await
            .unwrap()
            .header,
    );
    kv.put("inf0", "changed", PutOptions::new()).await.unwrap();
    let del_b = revision_of(
        kv.delete("inf/b", DeleteOptions::new())
            .await
            .unwrap()
            .header,
    );
    let del_c = revision_of(
        kv.delete("inf/c", DeleteOptions::new())
            .await
            .unwrap()
            .header,
    );

    let reached = timeout(PATIENCE, informer.wait_for_revision(del_c))
        .await
        .expect("the informer reaches the last change")
        .unwrap();
    assert!(reached >= del_c);
    let (revision, snapshot) = informer.snapshot();
    assert!(revision >= del_c);
    assert_eq!(
        pairs(&snapshot),
        vec![
            ("inf/a".to_owned(), "2".to_owned()),
            ("inf/d".to_owned(), "1".to_owned()),
        ]
    );
    assert_eq!(snapshot, fresh(&client, "inf/").await);
    assert_eq!(
        informer.get(b"inf/a").map(|kv| kv.mod_revision),
        Some(put_a)
    );
    assert_eq!(informer.get(b"inf/b"), None);

    // The events, in revision order, with the previous values from the informer's own map.
    let mut got = Vec::new();
    for _ in 0..4 {
        let event = timeout(PATIENCE, events.recv())
            .await
            .expect("an informer event in time")
            .unwrap();
        got.push(summary(&event));
    }
    assert_eq!(
        got,
        vec![
            (
                "PUT",
                "inf/a".to_owned(),
                "2".to_owned(),
                put_a,
                Some("1".to_owned())
            ),
            ("PUT", "inf/d".to_owned(), "1".to_owned(), put_d, None),
            (
                "DELETE",
                "inf/b".to_owned(),
                String::new(),
                del_b,
                Some("1".to_owned())
            ),
            (
                "DELETE",
                "inf/c".to_owned(),
                String::new(),
                del_c,
                Some("1".to_owned())
            ),
        ]
    );
    assert!(
        matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ),
        "no event for keys outside the prefix"
    );

    // A snapshot taken with a subscription is followed by exactly the later events.
    let (revision, snapshot, mut later) = informer.subscribe_with_snapshot();
    assert_eq!(pairs(&snapshot).len(), 2);
    let put_e = revision_of(
        kv.put("inf/e", "1", PutOptions::new())
            .await
            .unwrap()
            .header,
    );
    assert!(put_e > revision);
    let event = timeout(PATIENCE, later.recv()).await.unwrap().unwrap();
    assert_eq!(
        summary(&event),
        ("PUT", "inf/e".to_owned(), "1".to_owned(), put_e, None)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_for_revision_returns_when_nothing_under_the_prefix_changes() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();
    let kv = client.kv();

    let informer = Informer::start(&client, "quiet/", InformerOptions::new())
        .await
        .unwrap();
    // Writes elsewhere move the store's revision but produce no event for the informer: only
    // progress notifications can tell it that it is complete through them.
    let mut elsewhere = 0;
    for i in 0..3 {
        let r = kv
            .put("elsewhere", format!("{i}"), PutOptions::new())
            .await
            .unwrap();
        elsewhere = revision_of(r.header);
    }
    let reached = timeout(PATIENCE, informer.wait_for_revision(elsewhere))
        .await
        .expect("progress notifications confirm the revision")
        .unwrap();
    assert!(reached >= elsewhere);
    assert!(informer.revision() >= elsewhere);
    assert!(informer.snapshot().1.is_empty());

    // Once it returns for a change under the prefix, the snapshot has that change.
    let r = kv.put("quiet/k", "v", PutOptions::new()).await.unwrap();
    let written = revision_of(r.header);
    timeout(PATIENCE, informer.wait_for_revision(written))
        .await
        .expect("the informer reaches the put")
        .unwrap();
    assert_eq!(
        informer
            .get(b"quiet/k")
            .map(|kv| (text(&kv.value), kv.mod_revision)),
        Some(("v".to_owned(), written))
    );
    // An older revision is reached already.
    assert!(informer.wait_for_revision(1).await.unwrap() >= written);
}

/// The informer's member is frozen (SIGSTOP: connections stay open, nothing is answered) while
/// many changes are made and all history up to the last one is compacted, then killed with
/// SIGKILL. The informer's watch resumes on another member from a compacted revision, so it must
/// re-list: it emits a resync and ends with exactly the state a fresh linearizable read returns.
#[tokio::test(flavor = "multi_thread")]
async fn the_informer_resyncs_after_missing_compacted_history() {
    let c = cluster(3).await;
    let endpoints = c.endpoints();
    // Freeze a follower, so the writes below need no new election.
    let leader = c.leader_index().await.unwrap();
    let victim = (leader + 1) % endpoints.len();
    let mut ordered = vec![endpoints[victim].clone()];
    ordered.extend(
        endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, e)| e.clone()),
    );
    let survivors: Vec<String> = ordered[1..].to_vec();
    // The informer's client knows every endpoint and tries the victim first. No HTTP/2 pings: the
    // frozen member must look merely quiet until it is killed.
    let watcher = client(&ordered, options().without_keep_alive()).await;
    let writer = client(&survivors, options()).await;

    for i in 0..20 {
        put_retrying(&writer, &format!("cfg/{i:02}"), "0").await;
    }
    let informer = Informer::start(&watcher, "cfg/", InformerOptions::new())
        .await
        .unwrap();
    assert_eq!(watcher.current_endpoint(), endpoints[victim]);
    assert_eq!(informer.snapshot().1.len(), 20);
    let mut events = informer.subscribe();
    let live = put_retrying(&writer, "cfg/00", "1").await;
    timeout(PATIENCE, informer.wait_for_revision(live))
        .await
        .expect("the informer follows live changes")
        .unwrap();
    let before = informer.revision();

    c.pause(victim).unwrap();
    let mut last = 0;
    for i in 0..200 {
        let key = format!("cfg/{:02}", i % 30);
        last = if i % 7 == 3 {
            delete_retrying(&writer, &key).await
        } else {
            put_retrying(&writer, &key, &format!("{i}")).await
        };
    }
    put_retrying(&writer, "outside", "x").await;
    compact_retrying(&writer, last).await;
    // Both survivors have applied the compaction (a linearizable read waits for that), so the
    // informer cannot resume on either of them.
    for endpoint in &survivors {
        let member = client(std::slice::from_ref(endpoint), options()).await;
        let old = member
            .kv()
            .get(
                "cfg/",
                GetOptions::new().with_prefix().with_revision(before + 1),
            )
            .await;
        assert!(matches!(old, Err(Error::Compacted)), "{endpoint}: {old:?}");
    }
    assert_eq!(
        informer.revision(),
        before,
        "the frozen member delivered nothing"
    );
    c.kill(victim).unwrap();

    let resynced = timeout(Duration::from_secs(60), async {
        loop {
            match events.recv().await {
                Ok(InformerEvent::Resync { revision }) => return revision,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(err) => panic!("the informer's events ended: {err}"),
            }
        }
    })
    .await
    .expect("the informer re-lists after the compaction");
    assert!(resynced >= last, "re-listed at {resynced}, before {last}");

    timeout(PATIENCE, informer.wait_for_revision(last))
        .await
        .expect("the informer is complete through the last change")
        .unwrap();
    let (revision, snapshot) = informer.snapshot();
    assert!(revision >= last);
    let expected = fresh(&writer, "cfg/").await;
    assert!(!expected.is_empty());
    assert_eq!(snapshot, expected, "the informer's map equals a fresh read");
    assert_ne!(
        watcher.current_endpoint(),
        endpoints[victim],
        "the watch moved"
    );

    // And it keeps following after the resync.
    let after = put_retrying(&writer, "cfg/new", "1").await;
    timeout(PATIENCE, informer.wait_for_revision(after))
        .await
        .expect("the informer follows changes after the resync")
        .unwrap();
    assert_eq!(
        informer.get(b"cfg/new").map(|kv| kv.mod_revision),
        Some(after)
    );
}
