//! Watches and leases against real `conclave` clusters started by the test kit, checked against
//! etcd's semantics: history and live events in order with prev_kv and filters, resume across a
//! kill -9 of the member a watch runs on with no gap and no duplicate, compaction, the lease life
//! cycle, keep-alive (also across a kill -9), expiry after the keep-alive stops, and prompt
//! reporting of a lease revoked by someone else. Needs the `conclave` binary (built by
//! `cargo test --workspace`; or set CONCLAVE_BIN). Timeouts are generous: nothing here asserts
//! speed, only outcomes.

// Test code: a failed unwrap is a failed test, which is what we want.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_client::mvccpb::Event;
use conclave_client::mvccpb::event::EventType;
use conclave_client::proto::ResponseHeader;
use conclave_client::{
    Client, DeleteOptions, Error, GetOptions, LeaseLoss, PutOptions, WatchMessage, WatchOptions,
    WatchStream,
};
use tokio::time::{Instant, sleep, timeout};

mod common;

use common::{PATIENCE, cluster, options};

/// A client over the given endpoints, tried in this order.
async fn client(endpoints: &[String]) -> Client {
    Client::connect(endpoints, options()).await.unwrap()
}

/// The next message of a watch, which must come, and must not be an error.
async fn next(stream: &mut WatchStream) -> WatchMessage {
    timeout(PATIENCE, stream.next())
        .await
        .expect("a watch message in time")
        .expect("the watch is still running")
        .expect("no watch error")
}

/// Reads messages until at least `n` events arrived; returns them all (progress is skipped).
async fn events(stream: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut got = Vec::new();
    while got.len() < n {
        match next(stream).await {
            WatchMessage::Events { revision, events } => {
                assert!(!events.is_empty(), "an empty events message");
                for event in &events {
                    let kv = event.kv.as_ref().expect("event has a key-value");
                    assert!(
                        kv.mod_revision <= revision,
                        "event at {} in a response at {revision}",
                        kv.mod_revision
                    );
                }
                got.extend(events);
            }
            WatchMessage::Progress { .. } => {}
        }
    }
    got
}

/// (type, key, value, create revision, mod revision, version) of an event.
type Summary = (&'static str, String, String, i64, i64, i64);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn summary(event: &Event) -> Summary {
    let kv = event.kv.as_ref().expect("event has a key-value");
    let kind = if event.r#type == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    };
    (
        kind,
        text(&kv.key),
        text(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
    )
}

fn put(key: &str, value: &str, create: i64, modified: i64, version: i64) -> Summary {
    ("PUT", key.into(), value.into(), create, modified, version)
}

/// A delete event as etcd reports it: the key and the delete revision only.
fn del(key: &str, modified: i64) -> Summary {
    ("DELETE", key.into(), String::new(), 0, modified, 0)
}

/// The value of the event's previous key-value pair, if it carries one.
fn prev_value(event: &Event) -> Option<String> {
    event.prev_kv.as_ref().map(|kv| text(&kv.value))
}

/// The revision of a response's header.
fn revision_of(header: Option<ResponseHeader>) -> i64 {
    header.expect("response has a header").revision
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_delivers_history_then_live_events_in_order() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();
    let kv = client.kv();

    let r = kv.put("w/a", "1", PutOptions::new()).await.unwrap();
    let first = revision_of(r.header);
    kv.put("other", "x", PutOptions::new()).await.unwrap();
    kv.put("w/a", "2", PutOptions::new()).await.unwrap();
    kv.put("w/b", "1", PutOptions::new()).await.unwrap();
    let d = kv.delete("w/a", DeleteOptions::new()).await.unwrap();
    assert_eq!(d.deleted, 1);
    let deleted_a = revision_of(d.header);
    assert_eq!(deleted_a, first + 4);

    let watch = client.watch();
    let from_first = || WatchOptions::new().with_prefix().with_start_revision(first);
    let mut all = watch
        .watch("w/", from_first().with_prev_kv())
        .await
        .unwrap();
    let mut no_put = watch
        .watch("w/", from_first().with_filter_put())
        .await
        .unwrap();
    let mut no_delete = watch
        .watch("w/", from_first().with_filter_delete())
        .await
        .unwrap();
    let mut single = watch
        .watch("w/b", WatchOptions::new().with_start_revision(first))
        .await
        .unwrap();

    // Live changes, committed after every watch was confirmed.
    let r = kv.put("w/c", "1", PutOptions::new()).await.unwrap();
    let put_c = revision_of(r.header);
    let r = kv.delete("w/c", DeleteOptions::new()).await.unwrap();
    let deleted_c = revision_of(r.header);

    let got = events(&mut all, 6).await;
    assert_eq!(
        got.iter().map(summary).collect::<Vec<_>>(),
        vec![
            put("w/a", "1", first, first, 1),
            put("w/a", "2", first, first + 2, 2),
            put("w/b", "1", first + 3, first + 3, 1),
            del("w/a", deleted_a),
            put("w/c", "1", put_c, put_c, 1),
            del("w/c", deleted_c),
        ]
    );
    assert_eq!(
        got.iter().map(prev_value).collect::<Vec<_>>(),
        vec![
            None,
            Some("1".to_owned()),
            None,
            Some("2".to_owned()),
            None,
            Some("1".to_owned()),
        ]
    );

    let got = events(&mut no_put, 2).await;
    assert_eq!(
        got.iter().map(summary).collect::<Vec<_>>(),
        vec![del("w/a", deleted_a), del("w/c", deleted_c)]
    );
    assert!(
        got.iter().all(|e| e.prev_kv.is_none()),
        "prev_kv not asked for"
    );

    let got = events(&mut no_delete, 4).await;
    assert_eq!(
        got.iter().map(summary).collect::<Vec<_>>(),
        vec![
            put("w/a", "1", first, first, 1),
            put("w/a", "2", first, first + 2, 2),
            put("w/b", "1", first + 3, first + 3, 1),
            put("w/c", "1", put_c, put_c, 1),
        ]
    );

    let got = events(&mut single, 1).await;
    assert_eq!(
        got.iter().map(summary).collect::<Vec<_>>(),
        vec![put("w/b", "1", first + 3, first + 3, 1)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_request_reports_the_current_revision() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();
    let mut stream = client
        .watch()
        .watch("p/", WatchOptions::new().with_prefix())
        .await
        .unwrap();
    let r = client
        .kv()
        .put("elsewhere", "x", PutOptions::new())
        .await
        .unwrap();
    let written = revision_of(r.header);
    // The server may answer before it has seen the put; ask until it reports it.
    let reported = timeout(PATIENCE, async {
        loop {
            assert!(stream.request_progress(), "the watch is running");
            if let WatchMessage::Progress { revision } = next(&mut stream).await
                && revision >= written
            {
                return revision;
            }
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a progress notification at or after the put");
    assert!(reported >= written);
}

/// Reads a watch until the event for key `end`, recording (revision, key) of every event.
async fn consume(
    mut stream: WatchStream,
    seen: Arc<Mutex<Vec<(i64, String)>>>,
    end: &'static str,
) -> Result<(), Error> {
    loop {
        match stream.next().await {
            Some(Ok(WatchMessage::Events { events, .. })) => {
                let mut seen = seen.lock().unwrap();
                for event in events {
                    let kv = event.kv.unwrap();
                    let key = text(&kv.key);
                    let done = key == end;
                    seen.push((kv.mod_revision, key));
                    if done {
                        return Ok(());
                    }
                }
            }
            Some(Ok(WatchMessage::Progress { .. })) => {}
            Some(Err(err)) => return Err(err),
            None => panic!("the watch ended"),
        }
    }
}

/// Waits until `done` holds, checking every 20 ms.
async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    timeout(limit, async {
        while !done() {
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// A writer keeps putting new keys while the member the watch runs on is killed with SIGKILL. The
/// watch must resume elsewhere and deliver every revision exactly once, in order: since only this
/// writer writes, the revisions seen are contiguous, and every acknowledged put is among them at
/// its acknowledged revision.
#[tokio::test(flavor = "multi_thread")]
async fn watch_resumes_across_a_kill_without_gap_or_duplicate() {
    const END: &str = "r/zz-end";
    let c = cluster(3).await;
    let endpoints = c.endpoints();
    // The watcher tries node 0 first, so its watch runs there until node 0 dies.
    let watcher = client(&endpoints).await;
    // The writer never goes through node 0.
    let writer = client(&endpoints[1..]).await;

    let r = writer
        .kv()
        .put("r/start", "0", PutOptions::new())
        .await
        .unwrap();
    let start = revision_of(r.header);
    let stream = watcher
        .watch()
        .watch(
            "r/",
            WatchOptions::new().with_prefix().with_start_revision(start),
        )
        .await
        .unwrap();
    assert_eq!(watcher.current_endpoint(), endpoints[0]);

    let seen: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let consumer = tokio::spawn(consume(stream, seen.clone(), END));

    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writes = {
        let kv = writer.kv();
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !*stop_rx.borrow() {
                // Every key is written at most once, whatever the outcome.
                let key = format!("r/{seq:06}");
                seq += 1;
                match kv.put(key.clone(), "v", PutOptions::new()).await {
                    Ok(r) => {
                        let revision = r.header.unwrap().revision;
                        acked.lock().unwrap().insert(key, revision);
                    }
                    Err(_) => sleep(Duration::from_millis(20)).await,
                }
            }
        })
    };

    wait_until("events before the kill", PATIENCE, || {
        seen.lock().unwrap().len() >= 100
    })
    .await;
    c.kill(0).unwrap();
    let seen_at_kill = seen.lock().unwrap().len();
    let acked_at_kill = acked.lock().unwrap().len();
    wait_until("writes after the kill", Duration::from_secs(60), || {
        acked.lock().unwrap().len() >= acked_at_kill + 200
    })
    .await;
    wait_until("events after the kill", Duration::from_secs(60), || {
        seen.lock().unwrap().len() >= seen_at_kill + 200
    })
    .await;
    stop_tx.send(true).unwrap();
    writes.await.unwrap();

    // The end marker, retried until acknowledged (an ambiguous attempt may also land; the
    // consumer stops at the first one).
    let end = timeout(Duration::from_secs(60), async {
        loop {
            match writer.kv().put(END, "end", PutOptions::new()).await {
                Ok(r) => return r.header.unwrap().revision,
                Err(_) => sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the end marker is written");
    timeout(Duration::from_secs(60), consumer)
        .await
        .expect("the watch delivers the end marker")
        .unwrap()
        .expect("the watch ended without an error");
    assert_ne!(watcher.current_endpoint(), endpoints[0], "the watch moved");

    let seen = seen.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    let revisions: Vec<i64> = seen.iter().map(|(revision, _)| *revision).collect();
    assert_eq!(
        revisions[0], start,
        "the watch starts at its start revision"
    );
    for pair in revisions.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "gap or duplicate at {pair:?}");
    }
    let (last_revision, last_key) = seen.last().unwrap();
    assert_eq!(last_key, END);
    assert!(*last_revision <= end);
    let by_key: BTreeMap<&str, i64> = seen.iter().map(|(r, k)| (k.as_str(), *r)).collect();
    assert_eq!(by_key.len(), seen.len(), "a key delivered twice");
    for (key, revision) in &acked {
        assert_eq!(
            by_key.get(key.as_str()),
            Some(revision),
            "acknowledged put of {key} at {revision}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_from_a_compacted_revision_fails_with_the_compaction() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();
    let kv = client.kv();
    let mut revisions = Vec::new();
    for i in 0..5 {
        let r = kv
            .put("c/k", format!("{i}"), PutOptions::new())
            .await
            .unwrap();
        revisions.push(revision_of(r.header));
    }
    let compacted = revisions[3];
    kv.compact(compacted, true).await.unwrap();

    let options = WatchOptions::new().with_start_revision(revisions[0]);
    let answered = match client.watch().watch("c/k", options).await {
        Err(Error::WatchCompacted { compact_revision }) => compact_revision,
        Err(other) => panic!("expected a compaction error, got {other:?}"),
        Ok(mut stream) => {
            let answered = match timeout(PATIENCE, stream.next()).await.unwrap() {
                Some(Err(Error::WatchCompacted { compact_revision })) => compact_revision,
                other => panic!("expected a compaction error, got {other:?}"),
            };
            let after = timeout(PATIENCE, stream.next()).await.unwrap();
            assert!(after.is_none(), "the watch ended, got {after:?}");
            answered
        }
    };
    // etcd names the compaction point; Conclave the revision after it, the first a watch can start
    // from (deletes made at exactly the compaction point are gone from history).
    assert!(
        answered == compacted || answered == compacted + 1,
        "compact_revision {answered}, compacted at {compacted}"
    );

    // Resuming from the answered revision works, as the client's docs advise: it delivers what
    // came after the compaction (and, on etcd, the write at the compaction point itself).
    let mut stream = client
        .watch()
        .watch("c/k", WatchOptions::new().with_start_revision(answered))
        .await
        .unwrap();
    let mut expected = vec![put("c/k", "4", revisions[0], revisions[4], 5)];
    if answered == compacted {
        expected.insert(0, put("c/k", "3", revisions[0], revisions[3], 4));
    }
    let got = events(&mut stream, expected.len()).await;
    assert_eq!(got.iter().map(summary).collect::<Vec<_>>(), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_grant_time_to_live_list_and_revoke() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();
    let lease = client.lease();
    let kv = client.kv();

    let granted = lease.grant(60, None).await.unwrap();
    assert!(granted.id > 0, "{granted:?}");
    assert_eq!(granted.ttl, 60);
    let chosen = lease.grant(60, Some(0x1234)).await.unwrap();
    assert_eq!(chosen.id, 0x1234);
    let again = lease.grant(60, Some(0x1234)).await;
    assert!(matches!(again, Err(Error::LeaseExists)), "{again:?}");

    let left = lease.time_to_live(granted.id, true).await.unwrap();
    assert_eq!(left.id, granted.id);
    assert!((1..=60).contains(&left.ttl), "{left:?}");
    assert_eq!(left.granted_ttl, 60);
    assert!(left.keys.is_empty());

    kv.put("l/a", "1", PutOptions::new().with_lease(granted.id))
        .await
        .unwrap();
    kv.put("l/b", "2", PutOptions::new().with_lease(granted.id))
        .await
        .unwrap();
    let got = kv.get("l/a", GetOptions::new()).await.unwrap();
    assert_eq!(got.kvs[0].lease, granted.id);
    let mut keys = lease.time_to_live(granted.id, true).await.unwrap().keys;
    keys.sort();
    assert_eq!(keys, vec![b"l/a".to_vec(), b"l/b".to_vec()]);

    let ids: Vec<i64> = lease
        .leases()
        .await
        .unwrap()
        .leases
        .iter()
        .map(|l| l.id)
        .collect();
    assert!(
        ids.contains(&granted.id) && ids.contains(&0x1234),
        "{ids:?}"
    );

    lease.revoke(granted.id).await.unwrap();
    let got = kv.get("l/", GetOptions::new().with_prefix()).await.unwrap();
    assert_eq!(got.count, 0, "keys of a revoked lease are deleted");
    match lease.time_to_live(granted.id, false).await {
        Ok(left) => assert_eq!(left.ttl, -1, "{left:?}"),
        Err(err) => assert!(matches!(err, Error::LeaseNotFound), "{err:?}"),
    }
    let ids: Vec<i64> = lease
        .leases()
        .await
        .unwrap()
        .leases
        .iter()
        .map(|l| l.id)
        .collect();
    assert!(
        !ids.contains(&granted.id) && ids.contains(&0x1234),
        "{ids:?}"
    );

    let revoked = lease.revoke(granted.id).await;
    assert!(matches!(revoked, Err(Error::LeaseNotFound)), "{revoked:?}");
    let put = kv
        .put("l/c", "3", PutOptions::new().with_lease(granted.id))
        .await;
    assert!(matches!(put, Err(Error::LeaseNotFound)), "{put:?}");
    let kept = lease.keep_alive(granted.id).await;
    assert!(matches!(kept, Err(Error::LeaseNotFound)), "{kept:?}");
    lease.revoke(0x1234).await.unwrap();
}

/// Polls TimeToLive until the lease no longer exists.
async fn wait_until_gone(client: &Client, id: i64, limit: Duration) {
    let lease = client.lease();
    timeout(limit, async {
        loop {
            match lease.time_to_live(id, false).await {
                Ok(left) if left.ttl == -1 => return,
                Err(Error::LeaseNotFound) => return,
                _ => sleep(Duration::from_millis(250)).await,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("lease {id:x} still exists after {limit:?}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_holds_a_short_lease_until_dropped() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();
    let lease = client.lease();
    let kv = client.kv();

    let id = lease.grant(3, None).await.unwrap().id;
    kv.put("ka/k", "v", PutOptions::new().with_lease(id))
        .await
        .unwrap();
    let keep = lease.keep_alive(id).await.unwrap();
    assert_eq!(keep.id(), id);
    let ttl = keep.ttl();
    assert!(ttl >= 3, "granted at least what was asked: {ttl}");
    assert!(keep.deadline() > Instant::now());

    // Well past three TTLs, the lease is alive all along.
    let until = Instant::now() + Duration::from_secs(3 * ttl.unsigned_abs() + 2);
    while Instant::now() < until {
        assert_eq!(keep.loss(), None);
        let left = lease.time_to_live(id, false).await.unwrap();
        assert!(left.ttl > 0, "lease expired while kept alive: {left:?}");
        sleep(Duration::from_millis(500)).await;
    }
    let got = kv.get("ka/k", GetOptions::new()).await.unwrap();
    assert_eq!(got.count, 1);

    // Without the keep-alive it expires (it is not revoked by the drop) and takes its key along.
    drop(keep);
    wait_until_gone(&client, id, Duration::from_secs(ttl.unsigned_abs() + 15)).await;
    timeout(PATIENCE, async {
        while kv.get("ka/k", GetOptions::new()).await.unwrap().count != 0 {
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the expired lease's key is deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_revoked_elsewhere_is_reported_lost() {
    let c = cluster(1).await;
    let owner = c.client(0).await.unwrap();
    let other = c.client(0).await.unwrap();

    // A long TTL: the loss must be learned from the server, well before the lease could expire.
    let id = owner.lease().grant(30, None).await.unwrap().id;
    let keep = owner.lease().keep_alive(id).await.unwrap();
    assert_eq!(keep.loss(), None);
    other.lease().revoke(id).await.unwrap();
    let loss = timeout(Duration::from_secs(20), keep.lost())
        .await
        .expect("the loss is reported before the TTL could run out");
    assert_eq!(loss, LeaseLoss::NotFound);
    assert_eq!(keep.loss(), Some(LeaseLoss::NotFound));
}

/// The keep-alive's stream runs on node 0 until node 0 is killed; it must move to another member
/// and keep the lease alive.
#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_survives_a_kill_of_its_member() {
    let c = cluster(3).await;
    let endpoints = c.endpoints();
    let owner = client(&endpoints).await;
    let observer = client(&endpoints[1..]).await;

    let id = owner.lease().grant(6, None).await.unwrap().id;
    let keep = owner.lease().keep_alive(id).await.unwrap();
    assert_eq!(owner.current_endpoint(), endpoints[0]);
    c.kill(0).unwrap();

    let ttl = keep.ttl().unsigned_abs();
    let until = Instant::now() + Duration::from_secs(3 * ttl + 2);
    while Instant::now() < until {
        assert_eq!(keep.loss(), None, "lease lost after the kill");
        sleep(Duration::from_millis(500)).await;
    }
    let left = observer.lease().time_to_live(id, false).await.unwrap();
    assert!(left.ttl > 0, "the lease is alive: {left:?}");
    assert_ne!(owner.current_endpoint(), endpoints[0]);
}

/// Found by the harness (lease workload under partitions): a renewal waits up to TTL/3 for its
/// answer, so two members that answered nothing, tried one after the other, used up a 3 s TTL
/// although a quorum was healthy. After a failed renewal the client now renews on every endpoint
/// at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_lease_survives_two_silent_members_in_a_row() {
    let c = cluster(5).await;
    let leader = c.leader_index().await.unwrap();
    let silent: Vec<usize> = (0..5).filter(|&i| i != leader).take(2).collect();
    // The client tries the two members that will fall silent first, in that order.
    let mut endpoints: Vec<String> = silent.iter().map(|&i| c.client_endpoint(i)).collect();
    endpoints.extend(
        (0..5)
            .filter(|i| !silent.contains(i))
            .map(|i| c.client_endpoint(i)),
    );
    let client = Client::connect(endpoints, options()).await.unwrap();
    let id = client.lease().grant(3, None).await.unwrap().id;
    let keep_alive = client.lease().keep_alive(id).await.unwrap();
    for &i in &silent {
        c.pause(i).unwrap();
    }
    // Over more than two TTLs, the loss must never come (it came within one before the fix).
    let loss = timeout(Duration::from_secs(8), keep_alive.lost()).await;
    for &i in &silent {
        c.resume(i).unwrap();
    }
    assert!(
        loss.is_err(),
        "the lease was given up ({loss:?}) while 3 of 5 members were healthy"
    );
    let left = client.lease().time_to_live(id, false).await.unwrap();
    assert!(left.ttl > 0, "{left:?}");
}
